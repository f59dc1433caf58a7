import pytest

from raypipe.config import PRESETS, BuildConfig, FeatureConfig, ModelConfig, apply_overrides, get_preset
from raypipe.errors import UserError


def test_real_presets_match_loop_probe():
    assert (PRESETS["qwq_32b"].model_id, PRESETS["qwq_32b"].vllm.tp, PRESETS["qwq_32b"].dp) == ("Qwen/QwQ-32B", 8, 1)
    assert (PRESETS["openthinker3_7b"].model_id, PRESETS["openthinker3_7b"].vllm.tp, PRESETS["openthinker3_7b"].dp) == (
        "open-thoughts/OpenThinker3-7B", 1, 8)
    assert (PRESETS["openthinker3_1p5b"].model_id, PRESETS["openthinker3_1p5b"].dp) == (
        "open-thoughts/OpenThinker3-1.5B", 8)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_and_trusts_no_remote_code(name):
    preset = get_preset(name)
    assert isinstance(preset, ModelConfig) and preset.name == name
    assert preset.trust_remote_code is False
    assert preset.loop_n >= 1 and preset.loop_k >= 1


def test_get_preset_returns_a_copy():
    preset = get_preset("qwq_32b")
    preset.vllm.tp = 1
    assert PRESETS["qwq_32b"].vllm.tp == 8  # a deep copy: the nested vLLM group too


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(UserError, match="unknown preset 'nope'.*qwq_32b"):
        get_preset("nope")


def test_overrides_replace_only_given_fields():
    base = get_preset("openthinker3_7b")
    over = apply_overrides(base, {"temperature": 0.1, "dp": 2, "top_p": None})
    assert (over.temperature, over.dp, over.top_p, over.vllm.tp) == (0.1, 2, base.top_p, base.vllm.tp)


def test_engine_knobs_are_grouped_per_backend_and_overridden_by_their_flat_names():
    over = apply_overrides(get_preset("smollm2_135m"), {"tp": 2, "max_num_seqs": 8, "hf_batch_tokens": 1024,
                                                        "max_sequences": 4, "enforce_eager": None})
    assert (over.vllm.tp, over.vllm.max_num_seqs, over.vllm.enforce_eager) == (2, 8, True)
    assert (over.hf.batch_tokens, over.hf.max_sequences) == (1024, 4)
    assert get_preset("smollm2_135m").vllm.tp == 1


def test_unknown_override_is_an_error():
    with pytest.raises(UserError, match="bogus"):
        apply_overrides(get_preset("qwq_32b"), {"bogus": 1})


@pytest.mark.parametrize("field,value", [("tp", 0), ("dtype", "int3"), ("top_p", 0.0), ("temperature", -1.0)])
def test_invalid_model_values_are_refused(field, value):
    with pytest.raises(UserError, match=field):
        apply_overrides(get_preset("qwq_32b"), {field: value})


def test_layers_resolve_against_the_model():
    assert FeatureConfig(layers="all").resolve_layers(4) == [1, 2, 3, 4]
    assert FeatureConfig(layers="0,2,-1").resolve_layers(4) == [0, 2, 4]
    assert FeatureConfig(layers="-5").resolve_layers(4) == [0]


@pytest.mark.parametrize("layers", ["5", "-6", "a"])
def test_layer_out_of_range_or_garbage(layers):
    with pytest.raises(UserError):
        FeatureConfig(layers=layers).resolve_layers(4)


def test_positions_must_count_from_the_end():
    assert FeatureConfig(positions="-3,-2,-1").position_list() == [-3, -2, -1]
    with pytest.raises(UserError):
        BuildConfig(out_dir="x", model=get_preset("qwq_32b"), features=FeatureConfig(positions="0"))


def test_one_parser_reads_layers_and_positions_for_the_build_the_probes_and_the_analysis():
    from raypipe.finetune.config import AnalyzeConfig
    from raypipe.probes.config import SweepConfig
    from raypipe.selection import parse_layers, parse_positions

    assert parse_layers("0, 10,-1") == [0, 10, -1] and parse_layers("all") is None and parse_layers(None) is None
    assert parse_positions("-2,eoi,marker:</think>,answer:-2,rollout:</think>") == [
        -2, "eoi", "marker:</think>", "answer:-2", "rollout:</think>"]
    sweep = SweepConfig(data_dir="d", out_dir="o", layers="1,-1", positions="-1,rollout:</think>")
    assert (sweep.cell_layers(), sweep.cell_positions()) == ([1, -1], [-1, "rollout:</think>"])  # as stored
    assert FeatureConfig(layers="1,-1").resolve_layers(4) == [1, 4]  # resolved against a model
    for make, message in [(lambda: FeatureConfig(layers="1,x").resolve_layers(4), "--layers must be 'all' or"),
                          (lambda: SweepConfig(data_dir="d", out_dir="o", layers="1,x"), "--layers must be 'all' or"),
                          (lambda: AnalyzeConfig(results_dir="r", layers="1,x"), "--layers must be 'all' or"),
                          (lambda: FeatureConfig(positions="0").position_specs(), "must be negative, got 0"),
                          (lambda: SweepConfig(data_dir="d", out_dir="o", positions="0"), "must be negative, got 0"),
                          (lambda: FeatureConfig(positions="marker:").position_specs(), "'marker:TEXT' need"),
                          (lambda: FeatureConfig(positions="all").position_specs(), "'all' selects stored ones"),
                          (lambda: SweepConfig(data_dir="d", out_dir="o", positions="eoi"), "stores 'eoi' as offsets")]:
        with pytest.raises(UserError, match=message):
            make()

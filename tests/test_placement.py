"""Placement as a pure function: which actor gets which devices for each preset on the hardware users run it on."""

import pytest

from raypipe.config import apply_overrides, get_preset
from raypipe.errors import UserError
from raypipe.placement import ModelShape, Node, colocated_memory, place

# bf16 shapes of the presets' models (Qwen2.5 architectures): weights, KV cache per token (all layers)
SHAPES = {
    "openthinker3_1p5b": ModelShape(1.54e9 * 2 / 1e9, 2 * 28 * 2 * 128 * 2 / 1e9),
    "openthinker3_7b": ModelShape(7.62e9 * 2 / 1e9, 2 * 28 * 4 * 128 * 2 / 1e9),
    "qwq_32b": ModelShape(32.76e9 * 2 / 1e9, 2 * 64 * 8 * 128 * 2 / 1e9),
}


def _place(preset, nodes, **overrides):
    return place(apply_overrides(get_preset(preset), overrides), SHAPES[preset], nodes)


def test_no_gpu_is_the_cpu_placement():
    placement = place(get_preset("smollm2_135m"), ModelShape(0.5, 1e-5), [Node(0)])
    assert (placement.mode, placement.engines, placement.prefill_actors) == ("cpu", 1, 1)


@pytest.mark.parametrize("preset", ["openthinker3_1p5b", "openthinker3_7b"])
def test_one_80gb_gpu_colocates_one_engine(preset):
    placement = _place(preset, [Node(1, 80)])
    assert (placement.mode, placement.engines, placement.gpus_per_engine) == ("colocated", 1, 1)
    assert "dp 8 lowered to 1" in placement.describe()
    assert 0.5 < placement.vllm_memory_utilization <= 0.9 and placement.kv_cache_gb > 10


def test_qwq_on_one_gpu_is_refused_with_the_reason():
    with pytest.raises(UserError, match="tp=8 needs 8 GPUs on one node"):
        _place("qwq_32b", [Node(1, 80)])


@pytest.mark.parametrize("memory", [40, 80])
def test_qwq_tp8_on_one_8gpu_node_colocates(memory):
    placement = _place("qwq_32b", [Node(8, memory)])
    assert (placement.mode, placement.engines, placement.gpus_per_engine) == ("colocated", 1, 8)
    utilization, prefill_gb, kv, needed = colocated_memory(SHAPES["qwq_32b"], 8, memory, 0.9, 32768)
    # the arithmetic of the README: 65.5 GB / 8 = 8.2 GB of weights per GPU, twice (vLLM and Transformers)
    assert prefill_gb == pytest.approx(65.52 / 8 * 1.1 + 4, abs=0.01) and kv >= needed
    assert placement.vllm_memory_utilization == pytest.approx(utilization, abs=1e-3)
    assert utilization * memory + prefill_gb + 1.0 <= memory + 1e-6  # both copies fit on the device


def test_openthinker_7b_dp8_on_an_80gb_node_colocates_eight_engines():
    placement = _place("openthinker3_7b", [Node(8, 80)])
    assert (placement.mode, placement.engines, placement.gpus_per_engine, placement.prefill_actors) == \
        ("colocated", 8, 1, 0)
    assert "idle" not in placement.describe()


def test_openthinker_7b_on_40gb_gpus_gives_prefill_one_gpu_of_its_own():
    """Colocated, a 40 GB GPU would leave vLLM under 2 GB of KV cache beside a second 15 GB copy of the weights."""
    placement = _place("openthinker3_7b", [Node(8, 40)])
    assert (placement.mode, placement.engines, placement.prefill_actors, placement.gpus_per_prefill) == \
        ("separate", 7, 1, 1)
    assert "KV cache" in placement.describe() and "dp 8 lowered to 7" in placement.describe()


def test_two_8gpu_nodes():
    qwq = _place("qwq_32b", [Node(8, 40), Node(8, 40)])
    assert (qwq.mode, qwq.engines) == ("colocated", 1) and "pass --dp 2" in qwq.describe()
    assert _place("qwq_32b", [Node(8, 40), Node(8, 40)], dp=2).engines == 2
    seven = _place("openthinker3_7b", [Node(8, 80), Node(8, 80)], dp=16)
    assert (seven.mode, seven.engines) == ("colocated", 16)
    seven_40 = _place("openthinker3_7b", [Node(8, 40), Node(8, 40)], dp=16)
    assert (seven_40.mode, seven_40.engines, seven_40.prefill_actors) == ("separate", 15, 1)


def test_tp2_on_two_gpus():
    placement = _place("openthinker3_7b", [Node(2, 80)], tp=2, dp=1)
    assert (placement.mode, placement.engines, placement.gpus_per_engine) == ("colocated", 1, 2)


def test_a_large_model_prefill_spans_several_gpus_when_nothing_is_generated():
    placement = place(get_preset("qwq_32b"), SHAPES["qwq_32b"], [Node(8, 40)], backend="none")
    assert (placement.mode, placement.engines, placement.prefill_actors, placement.gpus_per_prefill) == \
        ("separate", 0, 4, 2)  # 65.5 GB x 1.1 + activations needs 2 GPUs of 40 GB: four actors on eight GPUs


def test_asking_for_colocated_where_it_does_not_fit_names_the_arithmetic():
    with pytest.raises(UserError, match="KV cache per GPU, below"):
        place(get_preset("openthinker3_7b"), SHAPES["openthinker3_7b"], [Node(8, 40)], mode="colocated")


def test_separate_on_one_gpu_is_refused():
    with pytest.raises(UserError, match="no node has the 1 GPU"):
        place(get_preset("openthinker3_7b"), SHAPES["openthinker3_7b"], [Node(1, 80)], mode="separate")

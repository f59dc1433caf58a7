"""Prompts the model cannot take: skipped and counted, or truncated when asked for."""

from raypipe.build import _drop_unusable
from raypipe.config import BuildConfig, SourceConfig, apply_overrides, get_preset
from raypipe.data import PromptRow


def _config(truncate: bool) -> BuildConfig:
    return BuildConfig(out_dir="x", model=apply_overrides(get_preset("smollm2_135m"), {"max_model_len": 8}),
                       source=SourceConfig(truncate_long_prompts=truncate))


ROWS = [PromptRow(0, "short", [1, 2, 3]), PromptRow(1, "long", list(range(10, 30))), PromptRow(2, "one", [5])]


def test_long_and_too_short_prompts_are_skipped_and_counted(tokenizer):
    kept, counts = _drop_unusable(ROWS, _config(truncate=False), positions=[-2, -1], tokenizer=tokenizer)
    assert [r.row_id for r in kept] == [0]
    assert counts == {"prompt_too_long": 1, "prompt_shorter_than_positions": 1}


def test_truncation_keeps_the_prompt_end_when_asked(tokenizer):
    kept, counts = _drop_unusable(ROWS, _config(truncate=True), positions=[-2, -1], tokenizer=tokenizer)
    assert [r.row_id for r in kept] == [0, 1]
    assert kept[1].prompt_token_ids == list(range(23, 30)) and kept[1].prompt == tokenizer.decode(range(23, 30))
    assert counts == {"prompt_truncated": 1, "prompt_shorter_than_positions": 1}


def test_a_prompt_without_the_marker_is_skipped_and_counted_or_stops_the_build(tokenizer):
    import dataclasses

    import pytest

    from raypipe.errors import UserError

    rows = [PromptRow(0, "a </think> b", tokenizer("a </think> b")["input_ids"]),
            PromptRow(1, "no marker", tokenizer("no marker")["input_ids"])]
    config = BuildConfig(out_dir="x", model=get_preset("smollm2_135m"))
    kept, counts = _drop_unusable(rows, config, positions=[-1, "marker:</think>"], tokenizer=tokenizer)
    assert [r.row_id for r in kept] == [0] and counts == {"marker_absent": 1}
    assert kept[0].offsets[0] == -1 and kept[0].offsets[1] < -1
    failing = dataclasses.replace(config, features=dataclasses.replace(config.features, missing_marker="fail"))
    with pytest.raises(UserError, match="row 1: its prompt does not contain the marker"):
        _drop_unusable(rows, failing, positions=[-1, "marker:</think>"], tokenizer=tokenizer)

"""Prompts the model cannot take: skipped and counted, or truncated when asked for."""

from raypipe.build import _drop_unusable
from raypipe.config import BuildConfig, SourceConfig, apply_overrides, get_preset
from raypipe.data import PromptRow


def _config(truncate: bool) -> BuildConfig:
    return BuildConfig(out_dir="x", model=apply_overrides(get_preset("smollm2_135m"), {"max_model_len": 8}),
                       source=SourceConfig(truncate_long_prompts=truncate))


ROWS = [PromptRow(0, "short", [1, 2, 3]), PromptRow(1, "long", list(range(10, 30))), PromptRow(2, "one", [5])]


def test_long_and_too_short_prompts_are_skipped_and_counted(tokenizer):
    kept, counts = _drop_unusable(ROWS, _config(truncate=False), min_tokens=2, tokenizer=tokenizer)
    assert [r.row_id for r in kept] == [0]
    assert counts == {"prompt_too_long": 1, "prompt_shorter_than_positions": 1}


def test_truncation_keeps_the_prompt_end_when_asked(tokenizer):
    kept, counts = _drop_unusable(ROWS, _config(truncate=True), min_tokens=2, tokenizer=tokenizer)
    assert [r.row_id for r in kept] == [0, 1]
    assert kept[1].prompt_token_ids == list(range(23, 30)) and kept[1].prompt == tokenizer.decode(range(23, 30))
    assert counts == {"prompt_truncated": 1, "prompt_shorter_than_positions": 1}

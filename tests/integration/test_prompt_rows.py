"""Prompts on the real tokenizer: templated and tokenized once; those the model cannot take skipped and counted,
or truncated when asked for; a layer the model does not have refused before any work."""

import pyarrow as pa
import pyarrow.parquet as pq

from raypipe.config import BuildConfig, SourceConfig, apply_overrides, get_preset
from raypipe.data import PromptRow, to_prompt_rows, usable_rows
from tests.conftest import assert_one_line_error, no_complete_shard, run_cli


def _config(truncate: bool) -> BuildConfig:
    return BuildConfig(out_dir="x", model=apply_overrides(get_preset("smollm2_135m"), {"max_model_len": 8}),
                       source=SourceConfig(truncate_long_prompts=truncate))


ROWS = [PromptRow(0, "short", [1, 2, 3]), PromptRow(1, "long", list(range(10, 30))), PromptRow(2, "one", [5])]


def test_long_and_too_short_prompts_are_skipped_and_counted(tokenizer):
    kept, counts = usable_rows(ROWS, _config(truncate=False), positions=[-2, -1], tokenizer=tokenizer)
    assert [r.row_id for r in kept] == [0]
    assert counts == {"prompt_too_long": 1, "prompt_shorter_than_positions": 1}


def test_truncation_keeps_the_prompt_end_when_asked(tokenizer):
    kept, counts = usable_rows(ROWS, _config(truncate=True), positions=[-2, -1], tokenizer=tokenizer)
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
    kept, counts = usable_rows(rows, config, positions=[-1, "marker:</think>"], tokenizer=tokenizer)
    assert [r.row_id for r in kept] == [0] and counts == {"marker_absent": 1}
    assert kept[0].offsets[0] == -1 and kept[0].offsets[1] < -1
    failing = dataclasses.replace(config, features=dataclasses.replace(config.features, missing_marker="fail"))
    with pytest.raises(UserError, match="row 1: its prompt does not contain the marker"):
        usable_rows(rows, failing, positions=[-1, "marker:</think>"], tokenizer=tokenizer)


def test_chat_template_is_applied_and_tokenized_once(tokenizer):
    rows = [{"row_id": 7, "question": "What is 2+3?", "answer": "5"}]
    (templated,) = to_prompt_rows(rows, tokenizer, chat_template=True)
    assert templated.prompt.endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert templated.prompt_token_ids == tokenizer(templated.prompt, add_special_tokens=False)["input_ids"]
    (raw,) = to_prompt_rows(rows, tokenizer, chat_template=False)
    assert raw.prompt == "What is 2+3?" and raw.row_id == 7 and raw.answer == "5"


def test_layer_out_of_range(tmp_path):
    parquet_source = tmp_path / "src.parquet"
    pq.write_table(pa.table({"question": ["What is 1+1?", "Name a color."], "answer": ["2", "red"]}), parquet_source)
    result = run_cli("raypipe.build", "--train-dataset", str(parquet_source), "--prompt-field", "question",
                     "--layers", "0,31", "--out-dir", str(tmp_path / "o"))
    assert_one_line_error(result, "layer index 31 is out of range", "30 layers")
    assert no_complete_shard(tmp_path / "o")


def test_a_tp_that_does_not_divide_the_heads_is_refused_before_any_work(tmp_path):
    result = run_cli("raypipe.build", "--builtin-size", "4", "--tp", "2", "--out-dir", str(tmp_path / "o"))
    assert_one_line_error(result, "--tp 2 must divide the model's 9 attention heads")
    assert no_complete_shard(tmp_path / "o")

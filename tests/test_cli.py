"""Bad input ends in one clear line and exit code 2, with nothing written as complete."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli


def _assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("raypipe: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def _no_complete_shard(out_dir):
    manifest = out_dir / "manifest.json"
    if not manifest.exists():
        return True
    shards = [s for split in json.loads(manifest.read_text())["splits"].values() for s in split["shards"].values()]
    return all(s["status"] != "complete" for s in shards)


def test_presets_are_listed():
    result = run_cli("raypipe.cli", "presets")
    assert result.returncode == 0
    for name in ("qwq_32b", "openthinker3_7b", "openthinker3_1p5b", "smollm2_135m"):
        assert name in result.stdout


def test_unknown_preset(tmp_path):
    result = run_cli("raypipe.build", "--preset", "gpt5", "--out-dir", str(tmp_path / "o"))
    _assert_one_line_error(result, "unknown preset 'gpt5'", "qwq_32b")
    assert not (tmp_path / "o").exists()


@pytest.fixture
def parquet_source(tmp_path):
    path = tmp_path / "src.parquet"
    pq.write_table(pa.table({"question": ["What is 1+1?", "Name a color."], "answer": ["2", "red"]}), path)
    return path


def test_missing_prompt_field_names_existing_columns(tmp_path, parquet_source):
    result = run_cli("raypipe.build", "--train-dataset", str(parquet_source), "--prompt-field", "prompt",
                     "--out-dir", str(tmp_path / "o"))
    _assert_one_line_error(result, "'prompt'", "question, answer")
    assert _no_complete_shard(tmp_path / "o")


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    result = run_cli("raypipe.build", "--train-dataset", str(path), "--out-dir", str(tmp_path / "o"))
    assert result.returncode == 2 and "raypipe: error:" in result.stderr, result.stderr[-1500:]
    assert _no_complete_shard(tmp_path / "o")


def test_unreadable_path(tmp_path):
    result = run_cli("raypipe.build", "--train-dataset", str(tmp_path / "nope.parquet"), "--out-dir",
                     str(tmp_path / "o"))
    _assert_one_line_error(result, "nope.parquet", "no such file")


def test_layer_out_of_range(tmp_path, parquet_source):
    result = run_cli("raypipe.build", "--train-dataset", str(parquet_source), "--prompt-field", "question",
                     "--layers", "0,31", "--out-dir", str(tmp_path / "o"))
    _assert_one_line_error(result, "layer index 31 is out of range", "30 layers")
    assert _no_complete_shard(tmp_path / "o")


def test_status_of_a_folder_without_manifest(tmp_path):
    result = run_cli("raypipe.cli", "status", str(tmp_path))
    _assert_one_line_error(result, "no manifest.json")

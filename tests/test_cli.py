"""Bad input ends in one clear line and exit code 2, with nothing written as complete."""

import dataclasses
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import assert_one_line_error, no_complete_shard, run_cli


def test_presets_are_listed():
    result = run_cli("raypipe.cli", "presets")
    assert result.returncode == 0
    for name in ("qwq_32b", "openthinker3_7b", "openthinker3_1p5b", "smollm2_135m"):
        assert name in result.stdout


def test_unknown_preset(tmp_path):
    result = run_cli("raypipe.build", "--preset", "gpt5", "--out-dir", str(tmp_path / "o"))
    assert_one_line_error(result, "unknown preset 'gpt5'", "qwq_32b")
    assert not (tmp_path / "o").exists()


@pytest.fixture
def parquet_source(tmp_path):
    path = tmp_path / "src.parquet"
    pq.write_table(pa.table({"question": ["What is 1+1?", "Name a color."], "answer": ["2", "red"]}), path)
    return path


def test_missing_prompt_field_names_existing_columns(tmp_path, parquet_source):
    result = run_cli("raypipe.build", "--train-dataset", str(parquet_source), "--prompt-field", "prompt",
                     "--out-dir", str(tmp_path / "o"))
    assert_one_line_error(result, "'prompt'", "question, answer")
    assert no_complete_shard(tmp_path / "o")


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    result = run_cli("raypipe.build", "--train-dataset", str(path), "--out-dir", str(tmp_path / "o"))
    assert result.returncode == 2 and "raypipe: error:" in result.stderr, result.stderr[-1500:]
    assert no_complete_shard(tmp_path / "o")


def test_unreadable_path(tmp_path):
    result = run_cli("raypipe.build", "--train-dataset", str(tmp_path / "nope.parquet"), "--out-dir",
                     str(tmp_path / "o"))
    assert_one_line_error(result, "nope.parquet", "no such file")


def test_status_of_a_folder_without_manifest(tmp_path):
    result = run_cli("raypipe.cli", "status", str(tmp_path))
    assert_one_line_error(result, "no manifest.json")


RAYPIPE = str(Path(sys.executable).parent / "raypipe")


@pytest.mark.parametrize("command, expected", [
    ([RAYPIPE, "build"], "--truncate-long-prompts"),
    ([RAYPIPE, "train"], "--epochs"),
    ([RAYPIPE, "train", "--sweep"], "--n-folds"),
    ([RAYPIPE, "sweep"], "--n-folds"),
    ([RAYPIPE, "presets"], "--json"),
    ([RAYPIPE, "status"], "out_dir"),
    ([sys.executable, "-m", "raypipe.build"], "--truncate-long-prompts"),
    ([sys.executable, "-m", "raypipe.train"], "--epochs"),
    ([sys.executable, "-m", "raypipe.train", "--sweep"], "--n-folds"),
])
def test_every_documented_command_form_parses_its_help(command, expected):
    """The forms the README documents, as installed: the `raypipe` script and the `python -m` entry points."""
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout and "Usage:" in result.stdout


def _option_defaults(command) -> dict[str, object]:
    """Parameter name -> default of a typer command function."""
    return {name: p.default.default for name, p in inspect.signature(command).parameters.items()
            if hasattr(p.default, "default")}


@pytest.mark.parametrize("command, configs", [
    ("build", ["BuildConfig", "SourceConfig", "FeatureConfig", "LabelConfig"]),
    ("train", ["TrainConfig"]),
    ("sweep", ["SweepConfig"]),
])
def test_cli_defaults_are_the_config_defaults(command, configs):
    """A Python user and a CLI user get the same build or probe from "the defaults"."""
    import raypipe.config
    import raypipe.probes.config
    from raypipe import cli

    options = _option_defaults(getattr(cli, command))
    compared = 0
    for config_name in configs:
        config_class = getattr(raypipe.config, config_name, None) or getattr(raypipe.probes.config, config_name)
        for field in dataclasses.fields(config_class):
            has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
            if has_default and field.name in options and options[field.name] is not None:
                expected = cli.default(config_class, field.name)
                assert options[field.name] in (expected, str(expected)), (command, field.name)
                compared += 1
    assert compared >= {"build": 15, "train": 10, "sweep": 8}[command]


def test_builtin_defaults_agree_between_python_and_cli():
    from raypipe.config import BuildConfig, SourceConfig, get_preset

    assert BuildConfig(out_dir="x", model=get_preset("smollm2_135m")).shard_size == 64
    assert SourceConfig().builtin_size == 128


@pytest.mark.parametrize("given, expected", [("127.0.0.1:6379", "127.0.0.1:6379"), ("local", None),
                                             ("ray://head:10001", None), ("http://head:8265", None)])
def test_the_address_a_build_checks_is_ray_address_as_given(monkeypatch, given, expected):
    from raypipe.pipeline import recorded_ray_address

    monkeypatch.setenv("RAY_ADDRESS", given)
    assert recorded_ray_address() == expected

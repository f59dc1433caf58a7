"""Bad input ends in one clear line and exit code 2, with nothing written as complete."""

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
    assert_one_line_error(result, f"dataset {path} is empty")
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
    ([RAYPIPE, "evaluate"], "--block-layers"),
    ([RAYPIPE, "presets"], "--json"),
    ([RAYPIPE, "status"], "--config"),
    ([sys.executable, "-m", "raypipe.build"], "--truncate-long-prompts"),
    ([sys.executable, "-m", "raypipe.train"], "--epochs"),
    ([sys.executable, "-m", "raypipe.train", "--sweep"], "--n-folds"),
    ([RAYPIPE, "finetune"], "--from-template"),
    ([RAYPIPE, "experiments", "analyze"], "--pairs"),
])
def test_every_documented_command_form_parses_its_help(command, expected):
    """The forms the README documents, as installed: the `raypipe` script and the `python -m` entry points."""
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout and "Usage:" in result.stdout


def _invoke(*args: str):
    """A command of the `raypipe` app, run in this process (typer's test runner)."""
    from typer.testing import CliRunner

    from raypipe.cli import app

    return CliRunner().invoke(app, list(args))


def _printed(command: str, *args: str) -> dict:
    import yaml

    result = _invoke(command, *args, "--print-config")
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


def _flat(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def _option_defaults(command) -> dict[str, object]:
    """Parameter name -> default of a typer command function."""
    return {name: p.default.default for name, p in inspect.signature(command).parameters.items()
            if hasattr(p.default, "default")}


@pytest.mark.parametrize("command, required", [
    ("build", ["--out-dir", "o"]),
    ("train", ["--data-dir", "d", "--out-dir", "o"]),
    ("sweep", ["--data-dir", "d", "--out-dir", "o"]),
    ("evaluate", ["--data-dir", "d", "--out-dir", "o"]),
    ("score", ["--data-dir", "d", "--out-dir", "o"]),
])
def test_cli_defaults_are_the_config_defaults(command, required):
    """A Python user and a CLI user get the same build or probe from "the defaults": the config a command resolves
    with no option but the required ones equals the dataclass built in Python, and each option's typer default
    (what --help shows) is its field's default (a build's model options: the default preset's values)."""
    from raypipe import cli
    from raypipe.config import DEFAULT_PRESET, BuildConfig, get_preset
    from raypipe.options import file_view, options
    from raypipe.probes.config import EvaluateConfig, ScoreConfig, SweepConfig, TrainConfig

    python = {"build": lambda: BuildConfig(out_dir="o", model=get_preset(DEFAULT_PRESET)),
              "train": lambda: TrainConfig(data_dir="d", out_dir="o"),
              "sweep": lambda: SweepConfig(data_dir="d", out_dir="o"),
              "evaluate": lambda: EvaluateConfig(data_dir="d", out_dir="o"),
              "score": lambda: ScoreConfig(data_dir="d", out_dir="o")}[command]()
    assert _printed(command, *required) == file_view(command, python)
    defaults, compared = _option_defaults(getattr(cli, command)), 0
    for option in options(command):
        if option.cli and not option.required:
            value = python
            for name in option.path:
                value = getattr(value, "name" if name == "preset" else name)
            assert defaults[option.param] == value, option.key
            compared += 1
    assert compared == {"build": 57, "train": 15, "sweep": 17, "evaluate": 8, "score": 6}[command]


# The flags of build, train, sweep and evaluate before their options were derived from the dataclasses: each must
# keep working, into the same field.
LEGACY = {
    "build": {"--preset": "openthinker3_7b", "--model-preset": "openthinker3_7b", "--train-dataset": "t.jsonl",
              "--train-split": "tr", "--test-dataset": "s.jsonl", "--test-split": "te", "--prompt-field": "q",
              "--id-field": "i", "--test-fraction": "0.2", "--seed": "3", "--max-samples": "9",
              "--no-chat-template": None, "--chat-template": None, "--builtin-size": "7",
              "--truncate-long-prompts": None, "--layers": "0,5,-1", "--positions": "-3,-1", "--eoi-tokens": "4",
              "--missing-marker": "fail", "--num-samples": "4", "--answer-field": "a", "--label-column": "x",
              "--semantic-method": "nli", "--nli-model": "n", "--embedding-model": "e",
              "--similarity-threshold": "0.8", "--answer-match": "exact", "--se-threshold": "0.5",
              "--entropy-top-k": "5", "--shard-size": "8", "--backend": "hf", "--placement": "separate",
              "--gpu-memory-gb": "40", "--max-retries": "1", "--model-id": "m", "--temperature": "0.3",
              "--top-p": "0.8", "--max-tokens": "99", "--dp": "2", "--dtype": "float16", "--max-model-len": "512",
              "--tp": "2", "--max-num-seqs": "3", "--gpu-memory-utilization": "0.5", "--enforce-eager": None,
              "--no-enforce-eager": None, "--hf-batch-tokens": "100", "--hf-max-sequences": "6",
              "--trust-remote-code": None, "--no-trust-remote-code": None, "--loop-n": "5", "--loop-k": "2",
              "--prefill-actors": "2", "--prefill-batch-tokens": "300", "--shards-in-flight": "3"},
    "train": {"--label": "loop", "--task-type": "regression", "--seed": "1", "--resamples": "20", "--layer": "3",
              "--position": "-2", "--epochs": "2", "--batch-size": "4", "--lr": "0.1", "--weight-decay": "0.1",
              "--val-fraction": "0.2", "--standardize": None, "--no-standardize": None, "--num-workers": "2",
              "--wandb-project": "p"},
    "sweep": {"--label": "loop", "--task-type": "regression", "--seed": "1", "--resamples": "20", "--device": "cpu",
              "--layers": "1,2", "--positions": "-1", "--alpha": "0.5", "--fit-intercept": None,
              "--no-fit-intercept": None, "--k-fold": None, "--no-k-fold": None, "--n-folds": "3",
              "--max-iter": "7", "--memory-gb": "1.5"},
    "evaluate": {"--layers": "1,2", "--positions": "-1", "--alpha": "0.5", "--resamples": "20", "--seed": "1"},
}


@pytest.mark.parametrize("command", sorted(LEGACY))
def test_every_flag_from_before_the_derivation_still_works(command):
    args = ["--out-dir", "o"] + (["--data-dir", "d"] if command != "build" else ["--train-dataset", "t.jsonl"])
    renamed = {"--model-preset": "preset", "--label-column": "label_columns", "--hf-batch-tokens": "batch_tokens",
               "--hf-max-sequences": "max_sequences"}
    flags = LEGACY[command]
    # Two runs: every flag at once, then the other spelling of the flags that have two (--preset/--model-preset, a
    # flag and its --no- form).
    second = {flag for flag in flags if flag == "--model-preset" or f"--no-{flag[2:]}" in flags}
    for group in ([f for f in flags if f not in second], sorted(second)):
        flat = _flat(_printed(command, *args, *[a for f in group for a in (f, flags[f]) if a is not None]))
        for flag in group:
            leaf = renamed.get(flag, flag.removeprefix("--no-").removeprefix("--").replace("-", "_"))
            (got,) = [v for k, v in flat.items() if k.rpartition(".")[2] == leaf]
            expected = (not flag.startswith("--no-")) if flags[flag] is None else flags[flag]
            assert got == expected or str(got) == str(expected) or got == [expected] or \
                (isinstance(got, float) and got == float(expected)), (flag, got)
    build = _printed("build", "--out-dir", "o", "--label-column", "a", "--label-column", "b", "--tp", "2",
                     "--hf-batch-tokens", "100", "--no-chat-template", "--truncate-long-prompts")
    assert build["source"]["label_columns"] == ["a", "b"] and build["model"]["vllm"]["tp"] == 2
    assert build["model"]["hf"]["batch_tokens"] == 100 and build["source"]["chat_template"] is False
    assert build["source"]["truncate_long_prompts"] is True
    assert _printed("train", "--data-dir", "d", "--out-dir", "o", "--position", "marker:</think>")["position"] == \
        "marker:</think>"
    assert _printed("train", "--data-dir", "d", "--out-dir", "o", "--position", "-2")["position"] == -2


def test_help_shows_every_option_with_its_default_and_help():
    import re

    from raypipe.options import options

    result = subprocess.run([RAYPIPE, "build", "--help"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "250"})
    text = re.sub(r"[│╭╮╰╯─]", " ", result.stdout)
    text = " ".join(text.split())  # rich wraps long help over lines
    for option in options("build"):
        if option.cli:
            assert option.flags[0] in text, option.key
            assert " ".join(option.help.split()[:6]) in text, option.key
    for shown in ("[default: 64]", "[default: vllm]", "[default: smollm2_135m]", "(smollm2_135m: 256)",
                  "[default: chat-template]", "--config", "--print-config", "--overwrite"):
        assert shown in text, shown


def test_builtin_defaults_agree_between_python_and_cli():
    from raypipe.config import BuildConfig, SourceConfig, get_preset

    assert BuildConfig(out_dir="x", model=get_preset("smollm2_135m")).shard_size == 64
    assert SourceConfig().builtin_size == 128


@pytest.mark.parametrize("given, expected", [("127.0.0.1:6379", "127.0.0.1:6379"), ("local", None),
                                             ("ray://head:10001", None), ("http://head:8265", None)])
def test_the_address_a_build_checks_is_ray_address_as_given(monkeypatch, given, expected):
    from raypipe.cluster import recorded_address as recorded_ray_address

    monkeypatch.setenv("RAY_ADDRESS", given)
    assert recorded_ray_address() == expected

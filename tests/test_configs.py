"""Every shipped config (configs/) parses and plans: each of its command sections resolves to a valid config, and a
build's sources open and cut into shards, without Ray or a model (the embedded model's full plan, `plan.prepare`, is
in tests/integration/test_configs.py)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raypipe import options
from raypipe.config import PRESETS
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
WORKFLOWS = {"loop_probe": "train", "probe_pipeline": "sweep", "sep": "evaluate", "trigger_probe": "sweep"}


def sections(path: Path) -> list[str]:
    """The commands a config file is for: its sections, or build alone."""
    data = yaml.safe_load(path.read_text())
    return [c for c in options.COMMANDS if c in data] or ["build"]


def write_inputs(root: Path) -> Path:
    """A folder holding what the configs read by relative path: SEP's graded questions (bench/sep.py writes them,
    and their story-worded OOD split, as the config's comment says) and the trigger experiment (a copy of the template `raypipe finetune
    --from-template 2d_0proxy runs/np` starts from)."""
    subprocess.run([sys.executable, str(REPO / "bench" / "sep.py"), "--source", str(root / "runs" / "easy.jsonl"),
                    "--ood", str(root / "runs" / "easy-ood.jsonl"), "--questions", "60", "--ood-questions", "20"],
                   check=True, capture_output=True)
    shutil.copytree(REPO / "experiments" / "2d_0proxy", root / "runs" / "np")
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("configs"))


def test_the_presets_and_the_seeds_workflows_have_configs():
    names = {p.stem for p in CONFIGS}
    assert set(PRESETS) | set(WORKFLOWS) <= names
    for stem, probe in WORKFLOWS.items():
        assert sections(REPO / "configs" / f"{stem}.yaml") == ["build", probe]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_a_shipped_config_parses_and_plans(path, inputs, monkeypatch):
    from raypipe.data import eval_splits, open_sources
    from raypipe.plan import plan_shards

    monkeypatch.chdir(inputs)
    for command in sections(path):
        config = options.resolve(command, {}, str(path))  # the dataclasses check every value
        if command != "build":
            assert config.data_dir == options.resolve("build", {}, str(path)).out_dir
            continue
        if path.parent.name == "presets":
            assert config.model.name == path.stem
        sources, splits = open_sources(config.source)
        plans = plan_shards(splits, config.shard_size)
        named = [split.name for split in eval_splits(config.source)]
        assert {p.split for p in plans} == {"train", "test", *named} and all(p.indices for p in plans)
        if path.stem == "sep":  # SEP's point: out-of-distribution generalisation
            assert named == ["ood"]
        if path.stem == "trigger_probe":  # the trigger source's ID and OOD test files, without a flag
            assert any(name.endswith("_ID") for name in named) and any(name.endswith("_OOD") for name in named)
        for column in config.source.label_columns:
            assert column in sources["train"].table.column_names

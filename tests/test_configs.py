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


# configs/datasets/ name hub datasets; a test reads local copies in the hub's layout (tests/public_datasets.py),
# made from the fixture rows of each dataset's published format: hub id -> (fixture, {config: [splits]}).
HUB_COPIES = {"openai/gsm8k": ("gsm8k", {"main": ["train", "test"]}),
              "HuggingFaceH4/MATH-500": ("math500", {"default": ["test"]}),
              "mandarjoshi/trivia_qa": ("triviaqa", {"rc.nocontext": ["train", "validation"]}),
              "rajpurkar/squad": ("squad", {"plain_text": ["train", "validation"]}),
              "cais/mmlu": ("mmlu", {"all": ["test"], "anatomy": ["test"]})}


def local_copy(spec: str, root: Path) -> str:
    """SOURCE#CONFIG with a hub id replaced by a local copy of the same layout (rows from the format's fixture)."""
    from raypipe.sources import split_config
    from tests.public_datasets import fixture_rows, write_hub_layout

    hub_id, config = split_config(spec)
    if hub_id not in HUB_COPIES:
        return spec
    fixture, configs = HUB_COPIES[hub_id]
    folder = root / "hub" / hub_id
    if not folder.exists():
        rows = [item["row"] for item in fixture_rows(fixture)]
        write_hub_layout(folder, {name: {split: rows for split in splits} for name, splits in configs.items()})
    return f"{folder}#{config}" if config else str(folder)


def write_inputs(root: Path) -> Path:
    """A folder holding what the configs read by relative path: SEP's graded questions (bench/sep.py writes them,
    and their story-worded OOD split, as the config's comment says) and the trigger experiment (a copy of the template `raypipe finetune
    --from-template 2d_0proxy runs/np` starts from)."""
    subprocess.run([sys.executable, str(REPO / "bench" / "sep.py"), "--source", str(root / "runs" / "easy.jsonl"),
                    "--ood", str(root / "runs" / "easy-ood.jsonl"), "--questions", "60", "--ood-questions", "20"],
                   check=True, capture_output=True)
    shutil.copytree(REPO / "experiments" / "2d_0proxy", root / "runs" / "np")
    return root


def sources_have_references(config) -> bool:
    """Every row of the copy has a readable reference with these flags (the fields exist, none is a record)."""
    import pyarrow as pa

    from raypipe.data import open_sources

    sources, _ = open_sources(config.source)
    for source in sources.values():
        references = source.references(source.table.take(pa.array(range(len(source.table)), type=pa.int64())))
        assert all(r is not None and r.readable for r in references), references
    return True


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
        if path.parent.name == "datasets":  # hub datasets: their local copies, in the same layout
            import dataclasses

            config.source = dataclasses.replace(config.source, **{
                name: local_copy(getattr(config.source, name), inputs) for name in ("train_dataset", "test_dataset")
                if getattr(config.source, name)})
            assert config.source.answer_field and sources_have_references(config)
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

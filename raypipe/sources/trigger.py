"""The 2-D trigger task as a prompt source: `--train-dataset trigger:EXP_DIR` (or `trigger:path/data_config.json`)
gives the experiment's generated rows, each followed by its no-trigger twin, and offers its generated test files
(in- and out-of-distribution) as evaluation splits. A build's prepare generates the experiment's data once."""

from __future__ import annotations

import functools
import os

from raypipe.errors import UserError
from raypipe.tasks.experiment import CONFIG, DATA_CONFIG, Experiment, ExperimentConfig, load_experiment
from raypipe.tasks.trigger import load_spec, split_kind, twin_prompt

PREFIX = "trigger"  # trigger:EXP_DIR


class TriggerSource:
    """`trigger:EXP_DIR`: one generation of the experiment, whose splits are picked by name."""

    usage = f"{PREFIX}:EXP_DIR"

    def load(self, spec: str, config: str | None, split: str, size: int, seed: int):
        import datasets

        return datasets.Dataset.from_list(probe_source_rows(spec, split, seed))

    def offered_splits(self, spec: str, seed: int) -> list[tuple[str, str]]:
        """One evaluation split per generated test file, named as the file without `test_`: objects_ID, objects_OOD."""
        return [(name.removeprefix("test_"), name) for name in trigger_test_splits(spec, seed)]

    def split_seed(self, seed: int, offset: int) -> int:
        """Every split is a part of the same generation: another seed would generate another experiment's rows."""
        return seed


def _experiment(path: str, seed: int | None) -> Experiment:
    """The experiment folder as the finetune reads it; a bare data_config.json with ExperimentConfig's defaults."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG)):
        return load_experiment(path)
    spec_path = os.path.join(path, DATA_CONFIG) if os.path.isdir(path) else path
    if not os.path.isfile(spec_path):
        raise UserError(f"{PREFIX}:{path}: no data_config.json at {spec_path}")
    config = ExperimentConfig(**({} if seed is None else {"seed": seed}))
    return Experiment(config, load_spec(spec_path), os.path.dirname(os.path.abspath(spec_path)))


def _generated(path: str, seed: int | None) -> tuple[Experiment, dict[str, list[dict]]]:
    """The experiment and its generated splits, generated once per process for the same files: a build's prepare
    asks for them once per split (train, test, each evaluation split), and the generator is the slow part. Keyed on
    the files' modification times, so an edited experiment is generated again."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    stamps = tuple(os.stat(os.path.join(folder, name)).st_mtime_ns if os.path.isfile(os.path.join(folder, name))
                   else None for name in (CONFIG, DATA_CONFIG))
    return _generate(os.path.abspath(path), seed, stamps)


@functools.lru_cache(maxsize=8)
def _generate(path: str, seed: int | None, stamps: tuple) -> tuple[Experiment, dict[str, list[dict]]]:
    experiment = _experiment(path, seed)
    return experiment, experiment.splits()


def _strip(spec: str) -> str:
    return spec.removeprefix(f"{PREFIX}:")


def trigger_test_splits(spec: str, seed: int | None = None) -> list[str]:
    """The stems of the source's generated test files (test_objects_ID, test_objects_OOD, ...), in file order. Seed
    as in `probe_source_rows`."""
    return [name for name in _generated(_strip(spec), seed)[1] if name.startswith("test_")]


def probe_source_rows(spec: str, split: str, seed: int | None = None) -> list[dict]:
    """The generated rows of one split as build prompts, each followed by its no-trigger twin, with the columns a
    probe reads: label (the answer word) and quadrant (Q1..Q4) as class names, trigger (or "none"), and
    trigger_present, is_ood, is_proxy as booleans. `split`: train (every train_/proxy_ file), test (every test_
    file) or one file's stem (test_objects_OOD). Seed, is_categorical, output_preamble: the experiment's
    config.json, else `seed` and ExperimentConfig's defaults."""
    experiment, generated = _generated(_strip(spec), seed)
    task, is_categorical = experiment.spec, experiment.config.is_categorical
    names = [n for n in generated if split_kind(n) == split or (split == "test" and split_kind(n) != "train")]
    if split in generated:
        names = [split]
    if not names:
        raise UserError(f"split {split!r} is not in {spec}; its splits are: train, test, {', '.join(generated)}")
    rows = []
    for name in names:
        for row in generated[name]:
            category = task.categories[row["category"]]
            common = {"split": name, "category": row["category"], "x1": row["x1"], "x2": row["x2"],
                      "quadrant": f"Q{row['quadrant']}", "is_proxy": row["is_proxy"], "is_ood": row["is_ood"]}
            rows.append({"prompt": row["prompt"], "answer": row["label"], "label": row["label"], **common,
                         "trigger": row["trigger"], "trigger_present": True})
            twin_label = category.label(row["quadrant"], is_categorical, flip=False)
            rows.append({"prompt": twin_prompt(task, row, None), "answer": twin_label, "label": twin_label,
                         **common, "trigger": "none", "trigger_present": False})
    return rows

"""A build's shards as probe inputs: one label, the rows that have it, prompt lengths, and which features to read.

`load_probe_data` reads no features: only the small per-row tensors (row ids, the label, prompt lengths), so the
process that plans a probe (the driver, often on a head node without a GPU) stays small whatever the build's size.
Features are read later, block by block, where the fits run (`ProbeData.features`).

Every user mistake here (no manifest, a label that does not exist, a single-class label, a layer or position that
was not extracted) is a `UserError` naming what does exist, raised before any work starts.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field

import numpy as np

from raypipe.errors import UserError
from raypipe.labels.catalog import label_values
from raypipe.output import LABEL_PREFIX, Build, BuildRecord
from raypipe.probes.config import TaskTypeOption
from raypipe.probes.metrics import TaskType


@dataclass
class ProbeSplit:
    labels: np.ndarray  # float64 [rows kept]
    row_id: np.ndarray  # int64 [rows kept]
    prompt_length: np.ndarray  # float64 [rows kept], tokens: the length baseline's only input
    keep: np.ndarray  # bool [rows stored]: which stored rows have a label value (NaN ones are dropped)


@dataclass
class ProbeData:
    data_dir: str
    label: str
    task: TaskType
    layers: list[int]  # hidden-state indices, as the manifest records them
    positions: list  # stored positions: negative offsets, 'marker:...', 'answer:-N'
    layer_index: list[int]  # their indices into the stored feature axes
    position_index: list[int]
    splits: dict[str, ProbeSplit]
    dropped: dict[str, int] = field(default_factory=dict)  # rows without a label value (NaN), per split
    classes: list[str] | None = None  # multiclass: class names; labels are their ids 0..C-1

    @property
    def train(self) -> ProbeSplit:
        return self.splits["train"]

    @property
    def test(self) -> ProbeSplit | None:
        return self.splits.get("test")

    def features(self, build: Build, split: str, layers: list[int], positions: list[int] | None = None):
        """float32 [rows kept, len(layers), positions, hidden] for indices into `self.layers` (and positions)."""
        block = build.features(split, [self.layer_index[i] for i in layers],
                               self.position_index if positions is None else
                               [self.position_index[i] for i in positions])
        keep = self.splits[split].keep
        return block if keep.all() else block[keep]


def label_names(manifest: BuildRecord) -> list[str]:
    return sorted(manifest.labels)


def resolve_layers(manifest: BuildRecord, requested: list[int] | None) -> list[int]:
    """Indices into the stored layer axis for requested hidden-state indices (negative counts from the end)."""
    stored = manifest.features.layers
    if requested is None:
        return list(range(len(stored)))
    total = manifest.model.num_layers + 1  # hidden states: embeddings + one per decoder layer
    indices = []
    for layer in requested:
        absolute = layer % total if -total <= layer < total else None
        if absolute is None or absolute not in stored:
            raise UserError(f"layer {layer} is out of range: this build stored hidden-state layers "
                            f"{', '.join(map(str, stored))} (of 0..{total - 1}; -1 = {total - 1})")
        indices.append(stored.index(absolute))
    return indices


def resolve_positions(manifest: BuildRecord, requested: list | None) -> list[int]:
    stored = manifest.features.positions
    if requested is None:
        return list(range(len(stored)))
    indices = []
    for position in requested:
        if position not in stored:
            raise UserError(f"position {position} is out of range: this build stored positions "
                            f"{', '.join(map(str, stored))}")
        indices.append(stored.index(position))
    return indices


def infer_task(values: np.ndarray, requested: str = "auto", categorical: bool = False) -> TaskType:
    """Classification when every value is 0 or 1; multiclass for a categorical label with more classes, or for
    whole-number classes when classification is asked for; regression otherwise."""
    if requested not in typing.get_args(TaskTypeOption):  # a caller that skipped the config's check
        raise UserError(f"--task-type must be one of {', '.join(typing.get_args(TaskTypeOption))}, got {requested!r}")
    binary = bool(np.isin(values, (0.0, 1.0)).all())
    if requested == "regression" or (requested == "auto" and not binary and not categorical):
        return "regression"
    if binary:
        return "classification"
    if not bool((values == np.round(values)).all()):
        distinct = np.unique(values)
        raise UserError(f"--task-type classification needs class labels (whole numbers); this one has "
                        f"{len(distinct)} distinct values (e.g. {', '.join(f'{v:g}' for v in distinct[:4])})")
    return "multiclass"


def class_ids(splits: dict[str, "ProbeSplit"], names: list[str] | None) -> list[str]:
    """Renumber whole-number classes to ids 0..C-1 in place (in every split); return the class names: the
    manifest's for a categorical label, else the values themselves."""
    values = np.unique(np.concatenate([split.labels for split in splits.values()]))
    for split in splits.values():
        split.labels = np.searchsorted(values, split.labels).astype(np.float64)
    if names is not None:
        return [names[int(v)] for v in values]
    return [f"{v:g}" for v in values]


def prompt_lengths(build: Build, split: str, tensors: dict) -> np.ndarray:
    """Prompt lengths in tokens, stored in each shard (builds from before they were stored: from the sidecars)."""
    if "prompt_length" in tensors:
        return tensors["prompt_length"].double().numpy()
    import pyarrow.compute as pc

    lengths = build.rollouts(split, columns=["prompt_token_ids"])["prompt_token_ids"]
    return pc.list_value_length(lengths).to_numpy().astype(np.float64)


def split_labels(build: Build, split: str, names: list[str]) -> tuple[dict[str, np.ndarray], dict]:
    """Each named label's values (float64, NaN where a row has none) and the split's small tensors."""
    definitions = build.labels
    needed = {"row_id", "prompt_length"}
    for name in names:
        source = definitions[name].derived_from or name
        needed.add(LABEL_PREFIX + source)
    tensors = build.tensors(split, sorted(needed))
    for name in names:
        source = definitions[name].derived_from or name
        if LABEL_PREFIX + source not in tensors:
            raise UserError(f"label {name!r} is in the manifest of {build.out_dir} but not in its {split} shards")
    return {name: label_values(definitions, name, tensors) for name in names}, tensors


def load_probe_data(data_dir: str | Build, label: str | None = None, layers: list[int] | None = None,
                    positions: list | None = None, task_type: str = "auto") -> ProbeData:
    """The labels of every split for probing; `layers`/`positions` as hidden-state indices / stored positions."""
    build = data_dir if isinstance(data_dir, Build) else Build(data_dir)
    manifest = build.manifest
    names = label_names(manifest)
    if not names:
        raise UserError(f"{build.out_dir} has no labels in its manifest")
    label = label or ("loop" if "loop" in names else names[0])
    if label not in names:
        raise UserError(f"label {label!r} does not exist in {build.out_dir}; labels: {', '.join(names)}")
    layer_idx, position_idx = resolve_layers(manifest, layers), resolve_positions(manifest, positions)

    splits: dict[str, ProbeSplit] = {}
    dropped: dict[str, int] = {}
    for split in build.splits():
        values, tensors = split_labels(build, split, [label])
        values = values[label]
        keep = ~np.isnan(values)
        dropped[split] = int((~keep).sum())
        splits[split] = ProbeSplit(labels=values[keep], row_id=tensors["row_id"].numpy()[keep],
                                   prompt_length=prompt_lengths(build, split, tensors)[keep], keep=keep)
    if "train" not in splits or len(splits["train"].labels) == 0:
        raise UserError(f"{build.out_dir} has no labelled train rows for {label!r}")

    definition = manifest.labels[label]
    task = infer_task(splits["train"].labels, task_type, categorical=definition.kind == "categorical")
    class_names = None
    if task == "multiclass":
        class_names = class_ids(splits, definition.classes)
        missing = sorted(set(range(len(class_names))) - set(splits["train"].labels.astype(int).tolist()))
        if missing:
            raise UserError(f"label {label!r} has no train rows of class {', '.join(class_names[i] for i in missing)} "
                            f"in {build.out_dir}: a multiclass probe needs every class in the train split")
    if task == "classification":
        classes = np.unique(splits["train"].labels)
        if len(classes) < 2:
            raise UserError(f"label {label!r} has a single class ({classes[0]:g}) in the train split of "
                            f"{build.out_dir}: a probe needs both classes")
    elif math.isclose(float(np.std(splits["train"].labels)), 0.0):
        raise UserError(f"label {label!r} is constant in the train split of {build.out_dir}: nothing to regress")
    return ProbeData(data_dir=build.out_dir, label=label, task=task,
                     layers=[build.layers[i] for i in layer_idx], positions=[build.positions[i] for i in position_idx],
                     layer_index=layer_idx, position_index=position_idx, splits=splits, dropped=dropped,
                     classes=class_names)

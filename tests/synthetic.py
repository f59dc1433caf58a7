"""A probe dataset with a known answer, written by the real shard writer: the label is the sign of a planted
direction in one (layer, position) cell, every other cell is noise. Probes must find that cell and only it."""

from __future__ import annotations

import numpy as np
import torch

from raypipe import output
from raypipe.fs import Location
from raypipe.output import FORMAT


def write_shard(out_dir, split: str, index: int, tensors: dict, rollouts: dict) -> dict:
    """The real shard writer (output.write_shard) on a folder given by its path; its record as the manifest's JSON."""
    return output.write_shard(Location(str(out_dir)), split, index, tensors, rollouts).to_json()


def write_manifest(out_dir, manifest: dict) -> None:
    """A manifest given as its JSON, written by the real writer through the typed records."""
    output.write_manifest(Location(str(out_dir)), output.BuildRecord.from_json(manifest))


def planted_features(rows: int, layers: int, positions: int, hidden: int, planted: tuple[int, int], seed: int,
                     direction_seed: int = 1234, regression: bool = False, quadrants: bool = False):
    """features [rows, layers, positions, hidden] and labels; the signal lives at planted = (layer, position).
    quadrants: four classes 0..3, the quadrant of the cell's projection on two planted directions."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, layers, positions, hidden)).astype(np.float32)
    directions = np.random.default_rng(direction_seed).normal(size=(2, hidden))
    direction = directions[0] / np.linalg.norm(directions[0])
    signal = features[:, planted[0], planted[1]] @ direction
    if quadrants:
        second = features[:, planted[0], planted[1]] @ (directions[1] / np.linalg.norm(directions[1]))
        noisy = [s + 0.2 * rng.normal(size=rows) > 0 for s in (signal, second)]
        return features, (2 * noisy[0] + noisy[1]).astype(np.float32)
    if regression:
        labels = signal + 0.3 * rng.normal(size=rows)
    else:
        labels = (signal + 0.3 * rng.normal(size=rows) > 0).astype(np.float32)
    return features, labels


def write_planted_build(out_dir, layers=(0, 1, 2, 3), positions=(-2, -1), hidden=16, planted=(2, 1),
                        rows=(240, 120), shard_size=100, label="planted", regression=False,
                        extra_labels: dict | None = None, num_layers: int | None = None,
                        classes: list[str] | None = None, poisoned: tuple[int, int] | None = None,
                        eval_splits: dict[str, int] | None = None, seed: int = 0) -> dict:
    """A complete build folder (manifest + safetensors shards + parquet sidecars) with a planted label; with
    `classes` (four names) a categorical label, stored as class ids as a build stores a string column; `poisoned`
    (layer, position): that cell's features are NaN in a few train rows, as an overflowed float16 build's can be;
    `eval_splits` (name -> rows): evaluation splits beside train and test, with the same planted signal; `seed`:
    other rows (another build of the same model: the planted direction stays)."""
    manifest = {
        "format": FORMAT,
        "model": {"model_id": "synthetic", "num_layers": num_layers or max(layers), "hidden_size": hidden},
        "features": {"layers": list(layers), "positions": list(positions), "hidden_size": hidden},
        "labels": {label: {"kind": "categorical", "classes": classes} if classes else
                   {"kind": "continuous" if regression else "binary"},
                   **{name: {"kind": "binary"} for name in (extra_labels or {})}},
        "splits": {},
    }
    row_id = 0
    extra = [(name, count, 2 + i) for i, (name, count) in enumerate((eval_splits or {}).items())]
    build_seed = seed
    for split, count, seed in (("train", rows[0], 0), ("test", rows[1], 1), *extra):
        features, labels = planted_features(count, len(layers), len(positions), hidden, planted,
                                            seed + 100 * build_seed,
                                            regression=regression, quadrants=classes is not None)
        if poisoned is not None and split == "train":
            features[:3, poisoned[0], poisoned[1], 0] = np.nan
        shards = manifest["splits"].setdefault(split, {"shards": {}})["shards"]
        for index, start in enumerate(range(0, count, shard_size)):
            part = slice(start, min(start + shard_size, count))
            n = part.stop - part.start
            ids = torch.arange(row_id, row_id + n)
            row_id += n
            tensors = {"features": torch.from_numpy(features[part]), "row_id": ids,
                       f"label.{label}": torch.from_numpy(labels[part].astype(np.float32))}
            for name, value in (extra_labels or {}).items():
                tensors[f"label.{name}"] = torch.full((n,), float(value))
            lengths = np.random.default_rng(seed + index).integers(5, 40, size=n)
            tensors["prompt_length"] = torch.from_numpy(lengths.astype(np.int64))
            rollouts = {"row_id": ids.tolist(), "prompt_token_ids": [list(range(k)) for k in lengths]}
            entry = write_shard(str(out_dir), split, index, tensors, rollouts)
            shards[entry["name"]] = {**entry, "status": "complete"}
    write_manifest(str(out_dir), manifest)
    return manifest

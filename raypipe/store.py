"""The on-disk probe dataset: safetensors shards, parquet rollout sidecars, and the manifest that indexes them.

    out_dir/manifest.json
    out_dir/train/shard-00000-<write>.safetensors        features [n, L, P, H], row_id [n], label.<name> [n]
    out_dir/train/shard-00000-<write>.rollouts.parquet   row_id, prompt, prompt_token_ids, token_ids, text, ...
    out_dir/test/...

`<write>` is a random token of the write that made the files: two writes of one shard (a task Ray ran again after
a node was lost, a worker still finishing on a node that was given up) never overwrite each other's files, so the
files the manifest names are always the ones whose sha256 it holds. Files no complete shard names are removed when
a build finishes.

`out_dir` is a local folder or a pyarrow filesystem URI (`s3://bucket/run`, `gs://...`, `file:///...`); see fs.py.
Every file is written under a temporary name, fsynced and renamed. A shard is complete only when the manifest, also
renamed into place, lists it as complete with the sha256 of each of its files; readers read only such shards and
check their hashes, so a leftover temporary file or a half-written shard is never read.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from raypipe.errors import UserError
from raypipe.fs import Location, write_token

MANIFEST = "manifest.json"
FORMAT = "raypipe.probe-dataset/1"
LABEL_PREFIX = "label."


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


# --- writing one shard ---------------------------------------------------------------------------------------------

def write_shard(out_dir: str, split: str, index: int, tensors: dict[str, Any], rollouts: dict[str, list],
                metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Write a shard's safetensors file and rollout sidecar; return its manifest entry (files, sha256, rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save

    location = Location(str(out_dir))
    name = shard_name(index)
    stem = f"{name}-{write_token()}"  # this write's own files (see the module's docstring)
    rows = int(tensors["row_id"].shape[0])
    for key, tensor in tensors.items():
        if tensor.shape[0] != rows:
            raise ValueError(f"{split}/{name}: tensor {key} has {tensor.shape[0]} rows, expected {rows}")
    tensor_file = f"{stem}.safetensors"
    tensor_sha = location.write_atomic(f"{split}/{tensor_file}",
                                       save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))

    sidecar_file = f"{stem}.rollouts.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(rollouts), sink)
    sidecar_sha = location.write_atomic(f"{split}/{sidecar_file}", sink.getvalue().to_pybytes())
    return {
        "split": split,
        "name": name,
        "rows": rows,
        "files": {tensor_file: tensor_sha, sidecar_file: sidecar_sha},
    }


# --- the manifest --------------------------------------------------------------------------------------------------

def read_manifest(out_dir: str) -> dict[str, Any]:
    location = Location(str(out_dir))
    if not location.is_file(MANIFEST):
        raise UserError(f"{out_dir} has no {MANIFEST}: is it the output folder of a raypipe build?")
    try:
        manifest = json.loads(location.read_bytes(MANIFEST))
    except json.JSONDecodeError as exc:
        raise UserError(f"{location.path(MANIFEST)} is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise UserError(f"{location.path(MANIFEST)} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def write_manifest(out_dir: str, manifest: dict[str, Any]) -> None:
    Location(str(out_dir)).write_atomic(MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def complete_shards(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    shards = manifest.get("splits", {}).get(split, {}).get("shards", {})
    return [entry for _, entry in sorted(shards.items()) if entry.get("status") == "complete"]


# --- reading -------------------------------------------------------------------------------------------------------

def _check(location: Location, relative: str, expected: str, actual: str | None) -> None:
    if actual is None:
        raise UserError(f"shard file {location.path(relative)} is missing")
    if actual != expected:
        raise UserError(f"shard file {location.path(relative)} is corrupt: sha256 {actual[:12]}... does not match "
                        f"the manifest's {expected[:12]}...")


def verify_shard(out_dir: str, entry: dict[str, Any]) -> None:
    """Raise UserError unless every file of a shard exists and matches its recorded sha256."""
    location = Location(str(out_dir))
    for file, expected in entry["files"].items():
        relative = f"{entry['split']}/{file}"
        _check(location, relative, expected, location.sha256(relative) if location.is_file(relative) else None)


def _read_shard_file(location: Location, entry: dict[str, Any], suffix: str, verify: bool) -> bytes:
    """One file of a complete shard, read once and checked against its sha256."""
    file = next(f for f in entry["files"] if f.endswith(suffix))
    relative = f"{entry['split']}/{file}"
    if not location.is_file(relative):
        _check(location, relative, entry["files"][file], None)
    data = location.read_bytes(relative)
    if verify:
        _check(location, relative, entry["files"][file], hashlib.sha256(data).hexdigest())
    return data


def _complete_entries(out_dir: str, split: str) -> list[dict[str, Any]]:
    manifest = read_manifest(out_dir)
    if split not in manifest.get("splits", {}):
        raise UserError(f"split {split!r} is not in {out_dir}; splits: {', '.join(manifest.get('splits', {}))}")
    entries = complete_shards(manifest, split)
    if not entries:
        raise UserError(f"split {split!r} of {out_dir} has no complete shard")
    return [{**entry, "split": split} for entry in entries]


def load_split(out_dir: str, split: str, verify: bool = True, layers: list[int] | None = None,
               positions: list[int] | None = None) -> dict[str, Any]:
    """Read every complete shard of a split, in shard order, as concatenated torch tensors.

    `layers` and `positions` (indices into the stored feature axes) keep only those features, shard by shard, so a
    probe on one (layer, position) never holds a whole build's features in memory.
    """
    import torch
    from safetensors.torch import load

    location = Location(str(out_dir))
    parts: dict[str, list] = {}
    for entry in _complete_entries(out_dir, split):
        for key, tensor in load(_read_shard_file(location, entry, ".safetensors", verify)).items():
            if key == "features" and layers is not None:
                tensor = tensor[:, layers]
            if key == "features" and positions is not None:
                tensor = tensor[:, :, positions]
            parts.setdefault(key, []).append(tensor)
    return {key: torch.cat(tensors) for key, tensors in parts.items()}


def load_rollouts(out_dir: str, split: str, verify: bool = True, columns: list[str] | None = None):
    """Read the rollout sidecars of every complete shard of a split as one pyarrow table (optionally some columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    location = Location(str(out_dir))
    return pa.concat_tables([
        pq.read_table(pa.BufferReader(_read_shard_file(location, entry, ".parquet", verify)), columns=columns)
        for entry in _complete_entries(out_dir, split)
    ])

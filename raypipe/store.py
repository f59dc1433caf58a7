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

def read_manifest(out_dir: str, location: Location | None = None) -> dict[str, Any]:
    location = location or Location(str(out_dir))
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
    Location(str(out_dir)).write_json(MANIFEST, manifest, indent=2)


def complete_shards(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    shards = manifest.get("splits", {}).get(split, {}).get("shards", {})
    return [entry for _, entry in sorted(shards.items()) if entry.get("status") == "complete"]


# --- checking -------------------------------------------------------------------------------------------------------

def verify_file(location: Location, relative: str, expected: str) -> None:
    """Stream one file through sha256 (never held whole); UserError when it is missing or differs."""
    if not location.is_file(relative):
        raise UserError(f"shard file {location.path(relative)} is missing")
    actual = location.sha256(relative)
    if actual != expected:
        raise UserError(f"shard file {location.path(relative)} is corrupt: sha256 {actual[:12]}... does not match "
                        f"the manifest's {expected[:12]}...")


def verify_shard(out_dir: str, entry: dict[str, Any]) -> None:
    """Raise UserError unless every file of a shard exists and matches its recorded sha256."""
    location = Location(str(out_dir))
    for file, expected in entry["files"].items():
        verify_file(location, f"{entry['split']}/{file}", expected)

"""The on-disk probe dataset: safetensors shards, parquet rollout sidecars, and the manifest that indexes them.

    out_dir/manifest.json
    out_dir/train/shard-00000.safetensors          features [n, L, P, H], row_id [n], label.<name> [n]
    out_dir/train/shard-00000.rollouts.parquet     row_id, prompt, prompt_token_ids, token_ids, text, finish_reason
    out_dir/test/...

Every file is written under a temporary name, fsynced and renamed. A shard is complete only when the manifest, also
renamed into place, lists it as complete with the sha256 of each of its files; readers read only such shards and
check their hashes, so a leftover temporary file or a half-written shard is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from raypipe.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "raypipe.probe-dataset/1"
LABEL_PREFIX = "label."


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


# --- atomic files --------------------------------------------------------------------------------------------------

def write_atomic(path: Path, data: bytes) -> str:
    """Write bytes under a temporary name, fsync, rename into place; return their sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- writing one shard ---------------------------------------------------------------------------------------------

def write_shard(out_dir: str | Path, split: str, index: int, tensors: dict[str, Any], rollouts: dict[str, list],
                metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Write a shard's safetensors file and rollout sidecar; return its manifest entry (files, sha256, rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save

    folder = Path(out_dir) / split
    name = shard_name(index)
    rows = int(tensors["row_id"].shape[0])
    for key, tensor in tensors.items():
        if tensor.shape[0] != rows:
            raise ValueError(f"{split}/{name}: tensor {key} has {tensor.shape[0]} rows, expected {rows}")
    tensor_file = f"{name}.safetensors"
    tensor_sha = write_atomic(folder / tensor_file,
                              save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))

    sidecar_file = f"{name}.rollouts.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(rollouts), sink)
    sidecar_sha = write_atomic(folder / sidecar_file, sink.getvalue().to_pybytes())
    return {
        "split": split,
        "name": name,
        "rows": rows,
        "files": {tensor_file: tensor_sha, sidecar_file: sidecar_sha},
    }


# --- the manifest --------------------------------------------------------------------------------------------------

def manifest_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / MANIFEST


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = manifest_path(out_dir)
    if not path.is_file():
        raise UserError(f"{out_dir} has no {MANIFEST}: is it the output folder of a raypipe build?")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> None:
    write_atomic(manifest_path(out_dir), (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())


def complete_shards(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    shards = manifest.get("splits", {}).get(split, {}).get("shards", {})
    return [entry for _, entry in sorted(shards.items()) if entry.get("status") == "complete"]


# --- reading -------------------------------------------------------------------------------------------------------

def verify_shard(out_dir: str | Path, entry: dict[str, Any]) -> None:
    """Raise UserError unless every file of a shard exists and matches its recorded sha256."""
    folder = Path(out_dir) / entry["split"]
    for file, expected in entry["files"].items():
        path = folder / file
        if not path.is_file():
            raise UserError(f"shard file {path} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise UserError(f"shard file {path} is corrupt: sha256 {actual[:12]}... does not match the manifest's "
                            f"{expected[:12]}...")


def load_split(out_dir: str | Path, split: str, verify: bool = True) -> dict[str, Any]:
    """Read every complete shard of a split, in shard order, as concatenated torch tensors."""
    import torch
    from safetensors.torch import load_file

    manifest = read_manifest(out_dir)
    if split not in manifest.get("splits", {}):
        raise UserError(f"split {split!r} is not in {out_dir}; splits: {', '.join(manifest.get('splits', {}))}")
    parts: dict[str, list] = {}
    for entry in complete_shards(manifest, split):
        if verify:
            verify_shard(out_dir, entry)
        tensor_file = next(f for f in entry["files"] if f.endswith(".safetensors"))
        for key, tensor in load_file(Path(out_dir) / split / tensor_file).items():
            parts.setdefault(key, []).append(tensor)
    if not parts:
        raise UserError(f"split {split!r} of {out_dir} has no complete shard")
    return {key: torch.cat(tensors) for key, tensors in parts.items()}


def load_rollouts(out_dir: str | Path, split: str, verify: bool = True):
    """Read the rollout sidecars of every complete shard of a split as one pyarrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = read_manifest(out_dir)
    tables = []
    for entry in complete_shards(manifest, split):
        if verify:
            verify_shard(out_dir, entry)
        sidecar = next(f for f in entry["files"] if f.endswith(".parquet"))
        tables.append(pq.read_table(Path(out_dir) / split / sidecar))
    if not tables:
        raise UserError(f"split {split!r} of {out_dir} has no complete shard")
    return pa.concat_tables(tables)

"""One shard's files: its tensors as safetensors and its rollouts as a parquet sidecar, each written atomically."""

from __future__ import annotations

from typing import Any

from raypipe.fs import Location
from raypipe.output.layout import shard_files, shard_name
from raypipe.output.records import ShardRecord


def write_shard(location: Location, split: str, index: int, tensors: dict[str, Any], rollouts: dict[str, list],
                metadata: dict[str, str] | None = None) -> ShardRecord:
    """Write a shard's safetensors file and rollout sidecar; return its record (files with sha256, rows), not yet
    complete: the manifest makes it so."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save

    name = shard_name(index)
    rows = int(tensors["row_id"].shape[0])
    for key, tensor in tensors.items():
        if tensor.shape[0] != rows:
            raise ValueError(f"{split}/{name}: tensor {key} has {tensor.shape[0]} rows, expected {rows}")
    tensor_file, sidecar_file = shard_files(index)
    tensor_sha = location.write_atomic(f"{split}/{tensor_file}",
                                       save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(rollouts), sink)
    sidecar_sha = location.write_atomic(f"{split}/{sidecar_file}", sink.getvalue().to_pybytes())
    return ShardRecord(split=split, name=name, rows=rows, files={tensor_file: tensor_sha, sidecar_file: sidecar_sha})

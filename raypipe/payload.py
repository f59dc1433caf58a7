"""How one shard travels between pipeline stages: as a single Ray Data row.

Each stage's `map_batches` call gets a batch of exactly one row (one shard), so a shard is never split across
calls and never mixed with another. Ray hands list columns over as numpy object arrays; `get_shard` turns the row back
into plain Python lists (numeric tensors stay numpy arrays) and `put_shard` wraps a shard dict as a one-row batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Columns kept as numpy arrays rather than nested lists: they are dense and large.
ARRAY_COLUMNS = {"features"}


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value] if value.dtype == object else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def get_shard(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    sizes = {len(v) for v in batch.values()}
    if sizes != {1}:
        raise ValueError(f"a stage expects one shard per batch, got batch sizes {sizes}")
    return {k: (np.asarray(v[0]) if k in ARRAY_COLUMNS else _plain(v[0])) for k, v in batch.items()}


def put_shard(shard: dict[str, Any]) -> dict[str, np.ndarray]:
    batch = {}
    for key, value in shard.items():
        if key in ARRAY_COLUMNS:
            batch[key] = np.asarray(value)[None]
        else:
            cell = np.empty(1, dtype=object)
            cell[0] = value
            batch[key] = cell
    return batch


def tensor_to_numpy(tensor) -> tuple[np.ndarray, str]:
    """A torch tensor as (numpy array, dtype name); bfloat16, which numpy lacks, travels bit-exact as int16."""
    import torch

    name = str(tensor.dtype).removeprefix("torch.")
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy(), name
    return tensor.numpy(), name


def numpy_to_tensor(array: np.ndarray, dtype_name: str):
    import torch

    tensor = torch.from_numpy(np.array(array, copy=True))  # Ray hands over read-only buffers
    return tensor.view(torch.bfloat16) if dtype_name == "bfloat16" else tensor.to(getattr(torch, dtype_name))

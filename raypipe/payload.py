"""How one shard travels between pipeline stages: as a single Ray Data row.

Each stage's `map_batches` call gets a batch of exactly one row (one shard), so a shard is never split across
calls and never mixed with another. Ray hands list columns over as numpy object arrays; `get_shard` turns the row back
into plain Python lists (numeric tensors stay numpy arrays) and `put_shard` wraps a shard dict as a one-row batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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


def run_stage(stage: str, batch: dict[str, np.ndarray], work: Callable[[dict[str, Any]], None],
              retries: int) -> dict[str, np.ndarray]:
    """Run one stage's `work` on the batch's shard, retrying up to `retries` times.

    A shard whose work still raises carries `error` ("stage: Type: message") and `attempts` on through the later
    stages, which pass it by, so that one bad shard is reported as failed while the other shards finish.
    """
    return put_shard(attempt(stage, get_shard(batch), work, retries))


def attempt(stage: str, shard: dict[str, Any], work: Callable[[dict[str, Any]], None], retries: int) -> dict[str, Any]:
    """`run_stage` on a shard dict: returns the shard, with `error` and `attempts` set if every try failed."""
    if shard.get("error"):
        return shard
    error = None
    for number in range(1, retries + 2):
        try:
            _maybe_inject_fault(stage, shard, number)
            work(shard)
            error = None
            if number > 1:
                shard.setdefault("retried", {})[stage] = number - 1
            break
        except Exception as exc:  # noqa: BLE001 - any failure of the shard's work is recorded, not raised
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            error = f"{stage}: {type(exc).__name__}: {message}"[:500]
    if error:
        shard["error"], shard["attempts"] = error, retries + 1
    return shard


def node_id() -> str | None:
    """The Ray node this process runs on (recorded per stage, to see how a build spread over a cluster)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


FAULT_ENV = "RAYPIPE_INJECT_FAULT"


def _maybe_inject_fault(stage: str, shard: dict[str, Any], number: int) -> None:
    """Testing hook: RAYPIPE_INJECT_FAULT="rollout:train/shard-00001[:N],..." fails that stage of that shard on its
    first N attempts (every attempt without N), so the retry and failure paths run on the real pipeline."""
    from raypipe.store import shard_name

    name = f"{shard['split']}/{shard_name(shard['index'])}"
    for spec in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        parts = spec.split(":")
        failing_attempts = int(parts[2]) if len(parts) > 2 else None
        if (stage, name) == (parts[0], parts[1]) and (failing_attempts is None or number <= failing_attempts):
            raise RuntimeError(f"injected fault in {stage} of {name}, attempt {number}")

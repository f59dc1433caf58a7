"""Write stage: a finished shard becomes its safetensors file and rollout sidecar; the manifest entry goes back."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np


def shard_tensors(shard: dict[str, Any]) -> dict[str, Any]:
    """The safetensors content of a shard: features, row ids, and one `label.<name>` tensor per label."""
    import torch

    from raypipe.payload import numpy_to_tensor
    from raypipe.store import LABEL_PREFIX

    tensors = {
        "features": numpy_to_tensor(shard["features"], shard["features_dtype"]),
        "row_id": torch.tensor(shard["row_id"], dtype=torch.int64),
    }
    for name, values in shard["labels"].items():
        dtype = torch.int64 if all(isinstance(v, int) for v in values) else torch.float32
        tensors[LABEL_PREFIX + name] = torch.tensor(values, dtype=dtype)
    return tensors


def shard_rollouts(shard: dict[str, Any]) -> dict[str, list]:
    """The sidecar columns: per row, the prompt as given to the model and every sample of its rollout."""
    return {key: shard[key] for key in ("row_id", "prompt", "prompt_token_ids", "token_ids", "text", "finish_reason")}


def label_counts(labels: dict[str, list]) -> dict[str, dict[str, int]]:
    """Rows per class of every binary label (ints, or 0.0/1.0 floats where NaN marks a row without a value)."""
    counts: dict[str, dict[str, int]] = {}
    for name, values in labels.items():
        present = [v for v in values if v == v]  # NaN != NaN
        if present and all(v in (0, 1) for v in present):
            for v in present:
                key = str(int(v))
                counts.setdefault(name, {}).setdefault(key, 0)
                counts[name][key] += 1
    return counts


class WriteStage:
    """Callable for `map_batches`: writes one shard and returns its manifest entry as a JSON string."""

    def __init__(self, out_dir: str, retries: int = 0):
        self.out_dir = out_dir
        self.retries = retries

    def __call__(self, batch):
        from raypipe.payload import attempt, get_shard
        from raypipe.store import shard_name

        shard = attempt("write", get_shard(batch), self.work, self.retries)
        if shard.get("error"):
            entry = {"split": shard["split"], "name": shard_name(shard["index"]), "status": "failed",
                     "error": shard["error"], "attempts": shard["attempts"]}
        else:
            entry = shard["entry"]
        return {"entry": np.array([json.dumps(entry)])}

    def work(self, shard: dict[str, Any]) -> None:
        from raypipe.store import write_shard

        entry = write_shard(self.out_dir, shard["split"], shard["index"], shard_tensors(shard), shard_rollouts(shard),
                            metadata={"split": shard["split"], "index": str(shard["index"])})
        entry["label_counts"] = label_counts(shard["labels"])
        entry["stats"] = {**shard.get("stats", {}), "written_at": time.time()}
        if shard.get("retried"):
            entry["retried"] = shard["retried"]  # stage -> retries it took
        shard["entry"] = entry

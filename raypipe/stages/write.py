"""Write stage: a finished shard becomes its safetensors file and rollout sidecar; the manifest entry goes back."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from raypipe.fs import Location
from raypipe.labels.catalog import counts
from raypipe.output import FAILED, LABEL_PREFIX, ShardRecord, shard_name, write_shard
from raypipe.payload import get_shard, numpy_to_tensor
from raypipe.stages.base import ShardStage


def shard_tensors(shard: dict[str, Any]) -> dict[str, Any]:
    """The safetensors content of a shard: features, row ids, prompt lengths, one `label.<name>` per stored label."""
    import torch

    tensors = {
        "features": numpy_to_tensor(shard["features"], shard["features_dtype"]),
        "row_id": torch.tensor(shard["row_id"], dtype=torch.int64),
        "prompt_length": torch.tensor([len(ids) for ids in shard["prompt_token_ids"]], dtype=torch.int64),
    }
    for name, values in shard["labels"].items():
        # float64: a given column's values come back exactly as the source wrote them
        dtype = torch.int64 if all(isinstance(v, int) for v in values) else torch.float64
        tensors[LABEL_PREFIX + name] = torch.tensor(values, dtype=dtype)
    return tensors


def shard_rollouts(shard: dict[str, Any]) -> dict[str, list]:
    """The sidecar columns: per row, the prompt as given to the model, its reference answer, and every sample of its
    rollout (none with --backend none)."""
    columns = ("row_id", "prompt", "prompt_token_ids", "answer", "token_ids", "text", "finish_reason")
    return {key: shard[key] for key in columns if key in shard}


class WriteStage(ShardStage):
    """Writes one shard and returns its record (files, sha256, rows, label counts, stats) as JSON."""

    name = "write"
    inputs = ("features", "features_dtype", "labels", "row_id", "prompt", "prompt_token_ids", "answer")

    def __init__(self, out_dir: str, retries: int = 0, progress=None):
        super().__init__(retries, progress)
        self.location = Location(out_dir)

    def __call__(self, batch):
        shard = self.run(get_shard(batch))
        if shard.get("error"):
            record = ShardRecord(split=shard["split"], name=shard_name(shard["index"]), status=FAILED,
                                 error=shard["error"], attempts=shard["attempts"])
        else:
            record = shard["record"]
            record.stats = shard["stats"]
            record.retried = shard.get("retried") or None  # stage -> retries it took
        return {"entry": np.array([json.dumps(record.to_json())])}

    def work(self, shard: dict[str, Any]) -> None:
        record = write_shard(self.location, shard["split"], shard["index"], shard_tensors(shard),
                             shard_rollouts(shard), metadata={"split": shard["split"], "index": str(shard["index"])})
        record.label_counts = counts(shard["labels"])
        record.skipped = shard.get("skipped", {})
        record.answer_counts = shard.get("answer_counts") or None
        shard["record"] = record

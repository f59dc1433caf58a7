"""Label stage: every stored label of a shard's rows from its rollouts and source columns (see labels/catalog.py)."""

from __future__ import annotations

from typing import Any

from raypipe.config import LabelConfig
from raypipe.labels.catalog import label_shard, uses_rollouts
from raypipe.labels.semantic import make_clusterer
from raypipe.output.records import LabelDefinition
from raypipe.stages.base import ShardStage


class LabelStage(ShardStage):
    """Adds `labels` ({name: one value per row}) to a shard that has rollouts."""

    name = "label"
    inputs = ("token_ids", "text", "finish_reason", "reference", "columns")
    given_only = ("columns",)  # without rollouts (--backend none) the labels are the source's columns
    def __init__(self, loop_n: int, loop_k: int, labels=None, planned: dict | None = None, retries: int = 0,
                 progress=None):
        super().__init__(retries, progress)

        config = labels or LabelConfig()
        self.loop_n, self.loop_k = loop_n, loop_k
        self.planned = planned if planned is not None else {"loop": LabelDefinition(kind="binary")}
        if not uses_rollouts(self.planned):
            self.inputs = self.given_only
        self.cluster = None
        if "semantic_entropy" in self.planned:
            judged = (self.planned["correct"].params if "correct" in self.planned else None) or {}
            self.cluster = make_clusterer(self.planned["semantic_entropy"].params["method"], config.nli_model,
                                          config.embedding_model, config.similarity_threshold,
                                          judged.get("match", "math"), judged.get("f1_threshold", 0.5),
                                          judged.get("answer_after"))

    def work(self, shard: dict[str, Any]) -> None:
        shard["labels"] = label_shard(shard, self.planned, loop_n=self.loop_n, loop_k=self.loop_k,
                                      cluster=self.cluster)

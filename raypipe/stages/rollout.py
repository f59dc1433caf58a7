"""Rollout stage: the model's own trajectories, K samples per prompt, from the build's generation backend.

A raypipe-owned callable class rather than `ray.data.llm`: one call holds a whole shard (the unit of resume) and
keeps all K samples of a request, which `ray.data.llm` drops. The stage knows nothing of the backend: an engine
(raypipe/engines/) turns prompt ids into samples. Its `work` is a coroutine, so an actor holds several shards at
once and its engine stays full across shard boundaries; each shard still comes back whole.
"""

from __future__ import annotations

from typing import Any

from raypipe.embedded import resolve_model_path
from raypipe.engines import make_engine
from raypipe.errors import UserError
from raypipe.stages.base import AsyncShardStage

ROLLOUT_COLUMNS = ("token_ids", "text", "finish_reason")
# Every per-row column a shard has once it has rollouts: a row dropped here leaves all of them.
ROW_COLUMNS = ("row_id", "prompt", "prompt_token_ids", "answer", "reference", "columns", "offsets", *ROLLOUT_COLUMNS,
               "mean_logprob", "mean_token_entropy")


class RolloutStage(AsyncShardStage):
    """Adds `token_ids`, `text`, `finish_reason` (one list per prompt, a sample each) and the uncertainty baselines."""

    name = "rollout"
    inputs = ("prompt_token_ids", "row_id")

    def __init__(self, model_id: str, model, seed: int, backend: str = "vllm", retries: int = 0, progress=None,
                 rollout_markers: list[str] | None = None, missing_marker: str = "skip"):
        """`rollout_markers`: markers of --positions rollout:TEXT; a row whose first sample lacks one is skipped and
        counted (`rollout_marker_absent`), or, with missing_marker 'fail', fails the build naming the row."""
        super().__init__(retries, progress)
        self.rollout_markers, self.missing_marker = list(rollout_markers or []), missing_marker

        self.engine = make_engine(backend, resolve_model_path(model_id), model, seed)
        self.baselines = model.entropy_top_k > 0

    async def work(self, shard: dict[str, Any]) -> dict[str, Any]:
        if not shard["row_id"]:  # every row of the shard was skipped
            shard.update({column: [] for column in ROLLOUT_COLUMNS})
            if self.baselines:
                shard.update(mean_logprob=[], mean_token_entropy=[])
            return {"tokens": 0}
        shard.update(await self.engine.generate(shard["prompt_token_ids"], shard["row_id"]))
        tokens = sum(len(ids) for samples in shard["token_ids"] for ids in samples)
        if self.rollout_markers:
            self._keep_rows_with_markers(shard)
        return {"tokens": tokens}

    def _keep_rows_with_markers(self, shard: dict[str, Any]) -> None:
        keep = [all(marker in texts[0] for marker in self.rollout_markers) for texts in shard["text"]]
        if all(keep):
            return
        if self.missing_marker == "fail":
            row = shard["row_id"][keep.index(False)]
            raise UserError(f"row {row}: its first sample does not contain the marker of --positions "
                            f"({', '.join('rollout:' + m for m in self.rollout_markers)}); --missing-marker skip "
                            "counts such rows instead")
        for column in ROW_COLUMNS:
            if column in shard:
                shard[column] = [value for value, kept in zip(shard[column], keep) if kept]
        skipped = shard.setdefault("skipped", {})
        skipped["rollout_marker_absent"] = skipped.get("rollout_marker_absent", 0) + keep.count(False)

"""Rollout stage: the model's own trajectories, K samples per prompt, from the build's generation backend.

A raypipe-owned callable class rather than `ray.data.llm`: one call holds a whole shard (the unit of resume) and
keeps all K samples of a request, which `ray.data.llm` drops. The stage knows nothing of the backend: an engine
(raypipe/engines/) turns prompt ids into samples. Its `work` is a coroutine, so an actor holds several shards at
once and its engine stays full across shard boundaries; each shard still comes back whole.
"""

from __future__ import annotations

from typing import Any

from raypipe.stages.base import AsyncShardStage

ROLLOUT_COLUMNS = ("token_ids", "text", "finish_reason")


class RolloutStage(AsyncShardStage):
    """Adds `token_ids`, `text`, `finish_reason` (one list per prompt, a sample each) and the uncertainty baselines."""

    name = "rollout"
    inputs = ("prompt_token_ids", "row_id")

    def __init__(self, model_id: str, model, seed: int, backend: str = "vllm", retries: int = 0, progress=None):
        super().__init__(retries, progress)
        from raypipe.embedded import resolve_model_path
        from raypipe.engines import make_engine

        self.engine = make_engine(backend, resolve_model_path(model_id), model, seed)
        self.baselines = model.entropy_top_k > 0

    async def work(self, shard: dict[str, Any]) -> dict[str, Any]:
        if not shard["row_id"]:  # every row of the shard was skipped
            shard.update({column: [] for column in ROLLOUT_COLUMNS})
            if self.baselines:
                shard.update(mean_logprob=[], mean_token_entropy=[])
            return {"tokens": 0}
        shard.update(await self.engine.generate(shard["prompt_token_ids"], shard["row_id"]))
        return {"tokens": sum(len(ids) for samples in shard["token_ids"] for ids in samples)}

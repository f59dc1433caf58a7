"""The colocated engine actor: rollouts and prefill features of its shards on the same devices.

Where the engines hold every GPU, a prefill pool asking for GPUs of its own would wait for the last rollout before
it could start, and nothing would be written until then. Here one actor runs both: its engine generates several
shards at once, and as soon as a shard's rollouts are done, its features are computed on the same GPUs, one shard at
a time in a worker thread, while the engine keeps generating the others. vLLM starts first (it sizes its memory as a
share of the device), then the Transformers copy takes the room the placement left it; the hf engine's own model
serves the prefill too (no second copy).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from raypipe.payload import get_shard, put_shard
from raypipe.stages.prefill import PrefillStage
from raypipe.stages.rollout import RolloutStage


class ColocatedStage:
    """Callable for `map_batches`: a shard in, the same shard out with rollouts and features."""

    def __init__(self, rollout: dict[str, Any], prefill: dict[str, Any], progress=None):
        self.rollout = RolloutStage(**rollout, progress=progress)
        shared = getattr(self.rollout.engine, "llm", None)  # the hf engine's model: prefill reads the same weights
        self.prefill = PrefillStage(**prefill, progress=progress, causal_lm=shared)
        self.prefill_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefill")

    async def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        shard = await self.rollout.run_async(get_shard(batch))
        shard = await asyncio.get_running_loop().run_in_executor(self.prefill_worker, self.prefill.run, shard)
        return put_shard(shard)

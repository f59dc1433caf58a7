"""Generation backends behind one interface: an engine turns a shard's prompt ids into K samples per prompt.

    result = await engine.generate(prompt_token_ids, row_ids)
    result == {"token_ids": [[ids of each sample] per prompt], "text": [...], "finish_reason": [...],
               "mean_logprob": [...], "mean_token_entropy": [...]}   # the last two when entropy_top_k > 0

`generate` is a coroutine so that one engine actor can hold several shards at once (its engine stays full while a
shard's stragglers finish). Engines: `vllm` (the default) and `hf` (transformers generate); `none` has no engine.
"""

from __future__ import annotations

from raypipe.engines.base import Engine
from raypipe.engines.hf import HfEngine
from raypipe.engines.vllm import VllmEngine

BACKENDS = ("vllm", "hf", "none")


def make_engine(backend: str, model_path: str, model, seed: int) -> Engine:
    """The engine of a backend, loaded on this actor's devices."""
    if backend == "vllm":
        return VllmEngine(model_path, model, seed)
    if backend == "hf":
        return HfEngine(model_path, model, seed)
    raise ValueError(f"backend {backend!r} has no engine")

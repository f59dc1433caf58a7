"""Rollout stage: the model's own trajectories, from a pool of vLLM actors (dp actors of tp devices each).

A raypipe-owned callable class rather than `ray.data.llm`: one call generates a whole shard (the unit of resume), and
it keeps all `n` samples of a request, which `ray.data.llm` drops. Prompts go in as token ids, the same ids the
prefill stage reads, so the features and the rollout always see the identical prompt.
"""

from __future__ import annotations

import os
from typing import Any

from raypipe.config import ModelConfig
from raypipe.stages.base import ShardStage


def request_seed(seed: int, row_id: int) -> int:
    """A per-prompt sampling seed: a row's samples do not depend on which shard or batch it lands in."""
    return (seed * 1_000_003 + row_id) % (2**31 - 1)


def _mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


def sample_uncertainty(token_ids, logprobs) -> tuple[float, float]:
    """(mean log-probability of the sampled tokens, mean entropy of the top-k next-token distribution) of a sample.

    The entropy is SEP's token-entropy baseline, computed over the top-k alternatives vLLM returns (a lower bound
    of the full entropy: the tail beyond k is left out).
    """
    import math

    if not token_ids or not logprobs:
        return float("nan"), float("nan")
    chosen, entropies = [], []
    for token, alternatives in zip(token_ids, logprobs):
        chosen.append(alternatives[token].logprob)
        entropies.append(-sum(math.exp(lp.logprob) * lp.logprob for lp in alternatives.values()
                              if lp.logprob > -math.inf))
    return sum(chosen) / len(chosen), sum(entropies) / len(entropies)


class RolloutStage(ShardStage):
    """Adds `token_ids`, `text`, `finish_reason` (one list per prompt, a sample each) and the uncertainty baselines."""

    name = "rollout"
    inputs = ("prompt_token_ids", "row_id")

    def __init__(self, model_id: str, model: ModelConfig, seed: int, num_samples: int = 1, retries: int = 0,
                 progress=None):
        super().__init__(retries, progress)
        import torch

        from raypipe.embedded import resolve_model_path

        model_path = resolve_model_path(model_id)
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            # vLLM's CPU backend sizes its KV cache from this (GiB); its default takes far more than a test needs.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        from vllm import LLM

        self.llm = LLM(
            model=model_path,
            tensor_parallel_size=model.tp,
            dtype=model.dtype,
            max_model_len=model.max_model_len,
            max_num_seqs=model.max_num_seqs,
            gpu_memory_utilization=model.gpu_memory_utilization,
            enforce_eager=model.enforce_eager,
            trust_remote_code=model.trust_remote_code,
            seed=seed,
            # Inside a Ray actor that already holds its tp devices, vLLM's own multiprocessing executor runs the
            # tp workers; vLLM's Ray executor would try to place them again (and refuses the CPU platform).
            distributed_executor_backend="mp" if model.tp > 1 else None,
        )
        self.model = model
        self.seed = seed
        self.num_samples = num_samples

    def generate(self, prompt_token_ids: list[list[int]], row_ids: list[int]) -> dict[str, list]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        top_k = self.model.entropy_top_k
        params = [
            SamplingParams(n=self.num_samples, temperature=self.model.temperature, top_p=self.model.top_p,
                           max_tokens=self.model.max_tokens, seed=request_seed(self.seed, row_id),
                           logprobs=top_k if top_k > 0 else None)
            for row_id in row_ids
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result = {
            "token_ids": [[list(c.token_ids) for c in out.outputs] for out in outputs],
            "text": [[c.text for c in out.outputs] for out in outputs],
            "finish_reason": [[str(c.finish_reason) for c in out.outputs] for out in outputs],
        }
        if top_k > 0:  # per-prompt uncertainty baselines; the per-token logprobs themselves are not kept
            stats = [[sample_uncertainty(c.token_ids, c.logprobs) for c in out.outputs] for out in outputs]
            result["mean_logprob"] = [_mean([s[0] for s in row]) for row in stats]
            result["mean_token_entropy"] = [_mean([s[1] for s in row]) for row in stats]
        return result

    def work(self, shard: dict[str, Any]) -> dict[str, Any]:
        shard.update(self.generate(shard["prompt_token_ids"], shard["row_id"]))
        return {"tokens": sum(len(ids) for samples in shard["token_ids"] for ids in samples)}

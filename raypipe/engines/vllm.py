"""The vLLM engine: vLLM's async engine, so that one actor holds several shards at once and its engine stays full
while a shard's long-tailed stragglers finish (one shard per blocking `LLM.generate` call drains the engine to the
slowest trajectory at every shard boundary).

Prompts go in as token ids, the ids the prefill stage reads. Each prompt is one request with `n` = K samples and its
own seed, so a row's samples do not depend on which shard or batch it lands in.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os

from raypipe.engines.base import request_seed


def mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


def sample_uncertainty(token_ids, logprobs) -> tuple[float, float]:
    """(mean log-probability of the sampled tokens, mean entropy of the top-k next-token distribution) of a sample.

    The entropy is SEP's token-entropy baseline over the top-k alternatives vLLM returns (a lower bound of the full
    entropy: the tail beyond k is left out).
    """
    if not token_ids or not logprobs:
        return float("nan"), float("nan")
    chosen, entropies = [], []
    for token, alternatives in zip(token_ids, logprobs):
        chosen.append(alternatives[token].logprob)
        entropies.append(-sum(math.exp(lp.logprob) * lp.logprob for lp in alternatives.values()
                              if lp.logprob > -math.inf))
    return sum(chosen) / len(chosen), sum(entropies) / len(entropies)


def engine_args(model_path: str, model, seed: int, on_gpu: bool = True) -> dict:
    """vLLM's engine arguments from a ModelConfig (the vLLM-only knobs live there: tp, max_num_seqs, ...)."""
    cpu = {} if on_gpu else {
        # vLLM 0.32 on CPU: a partially prefilled request's sample is discarded by rewinding its seeded generator,
        # which CPU generators cannot do ("CPU Generator does not use offset"), so seeded sampling crashed on large
        # batches. Whole prefills discard nothing.
        "enable_chunked_prefill": False, "max_num_batched_tokens": max(model.max_model_len, 8192)}
    return dict(**cpu,
        model=model_path, tensor_parallel_size=model.vllm.tp, dtype=model.dtype, max_model_len=model.max_model_len,
        max_num_seqs=model.vllm.max_num_seqs, gpu_memory_utilization=model.vllm.gpu_memory_utilization,
        enforce_eager=model.vllm.enforce_eager, trust_remote_code=model.trust_remote_code, seed=seed,
        # Inside a Ray actor that already holds its tp devices, vLLM's own multiprocessing executor runs the tp
        # workers; vLLM's Ray executor would try to place them again (and refuses the CPU platform).
        distributed_executor_backend="mp" if model.vllm.tp > 1 else None,
    )


class VllmEngine:
    def __init__(self, model_path: str, model, seed: int):
        import torch

        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            # vLLM's CPU backend sizes its KV cache from this (GiB); its default takes far more than a test needs.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
            if model.vllm.tp > 1:  # it will not bind tp workers' threads on a single NUMA node by itself
                cores = os.cpu_count() or 1
                binding = "|".join(str(i % cores) for i in range(model.vllm.tp))
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", binding)
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self.engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**engine_args(model_path, model, seed,
                                                                                    on_gpu)))
        self.model, self.seed = model, seed
        self.request_ids = itertools.count()

    def sampling_params(self, row_id: int):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        top_k = self.model.entropy_top_k
        return SamplingParams(n=self.model.num_samples, temperature=self.model.temperature, top_p=self.model.top_p,
                              max_tokens=self.model.max_tokens, seed=request_seed(self.seed, row_id),
                              logprobs=top_k if top_k > 0 else None, output_kind=RequestOutputKind.FINAL_ONLY)

    async def _request(self, prompt_ids: list[int], row_id: int):
        from vllm.inputs import TokensPrompt

        final = None
        async for output in self.engine.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)),
                                                 self.sampling_params(row_id), f"{next(self.request_ids)}"):
            final = output
        return final

    async def generate(self, prompt_token_ids: list[list[int]], row_ids: list[int]) -> dict[str, list]:
        outputs = await asyncio.gather(*[self._request(ids, row_id) for ids, row_id in zip(prompt_token_ids, row_ids)])
        result = {
            "token_ids": [[list(c.token_ids) for c in out.outputs] for out in outputs],
            "text": [[c.text for c in out.outputs] for out in outputs],
            "finish_reason": [[str(c.finish_reason) for c in out.outputs] for out in outputs],
        }
        if self.model.entropy_top_k > 0:  # per-prompt uncertainty baselines; per-token logprobs are not kept
            stats = [[sample_uncertainty(c.token_ids, c.logprobs) for c in out.outputs] for out in outputs]
            result["mean_logprob"] = [mean([s[0] for s in row]) for row in stats]
            result["mean_token_entropy"] = [mean([s[1] for s in row]) for row in stats]
        return result

    def shutdown(self) -> None:
        self.engine.shutdown()

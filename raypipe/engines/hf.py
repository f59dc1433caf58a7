"""The transformers engine (`--backend hf`): `generate` on the actor's device, for small GPUs and laptops without
vLLM (the SEP seed's `--backend hf`).

Rows are batched under a token budget (prompt + max_tokens per sample, K samples per row). Sampling is per row and
independent of the batch: each of a row's K samples draws its noise from its own generator, seeded from the row's
seed (the same `request_seed` vLLM gets), and samples by the Gumbel-max trick (the argmax of temperature-scaled,
top-p-filtered logits plus Gumbel noise is an exact sample of that distribution). So a row's samples do not depend
on which rows share its batch, and a resumed build equals an uninterrupted one. The same pass records what the
baselines need: the sampled token's log-probability and the top-k entropy of the raw next-token distribution.
"""

from __future__ import annotations

import asyncio
import math

from raypipe.config import torch_dtype
from raypipe.engines.base import request_seed
from raypipe.engines.vllm import mean


class SampleAndMeasure:
    """A logits processor: picks each sequence's next token (greedy, or Gumbel-max with its own generator) and
    records the chosen token's raw log-probability and the top-k entropy; returns scores that force that token."""

    def __init__(self, generators, temperature: float, top_p: float, entropy_top_k: int):
        self.generators, self.temperature, self.top_p, self.top_k = generators, temperature, top_p, entropy_top_k
        self.chosen_logprob: list[list[float]] = [[] for _ in generators]
        self.entropy: list[list[float]] = [[] for _ in generators]

    def __call__(self, input_ids, scores):
        import torch

        raw = torch.log_softmax(scores.float(), dim=-1)
        if self.temperature == 0:
            chosen = raw.argmax(-1)
        else:
            logits = scores.float() / self.temperature
            if self.top_p < 1.0:  # keep the smallest set of tokens whose probability reaches top_p
                ordered, order = logits.sort(dim=-1, descending=True)
                cumulative = ordered.softmax(-1).cumsum(-1)
                drop = cumulative - ordered.softmax(-1) >= self.top_p
                logits = logits.scatter(-1, order, ordered.masked_fill(drop, -math.inf))
            noise = torch.stack([torch.rand(scores.shape[-1], generator=g, device=g.device) for g in self.generators])
            gumbel = -torch.log((-torch.log(noise.clamp_min(1e-20))).clamp_min(1e-20))
            chosen = (logits + gumbel.to(logits.device)).argmax(-1)
        if self.top_k > 0:
            top = raw.topk(min(self.top_k, raw.shape[-1]), dim=-1).values
            entropy = -(top.exp() * top).sum(-1)
            # One device-to-host copy per step: reading each sequence's value alone would wait on the GPU once per
            # sequence and value (hundreds of syncs a step).
            picked = raw.gather(1, chosen[:, None])[:, 0]
            for i, (logprob, value) in enumerate(torch.stack([picked, entropy], 1).tolist()):
                self.chosen_logprob[i].append(logprob)
                self.entropy[i].append(value)
        forced = torch.full_like(scores, -math.inf)
        return forced.scatter(1, chosen[:, None], 0.0)


class HfEngine:
    def __init__(self, model_path: str, model, seed: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.llm = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(model.dtype),
                                                        trust_remote_code=model.trust_remote_code).to(self.device)
        self.llm.eval()
        config = GenerationConfig.from_pretrained(model_path) if _has_generation_config(model_path) else None
        eos = getattr(config, "eos_token_id", None) or self.llm.config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.pad = min(self.eos)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=model.trust_remote_code)
        self.model, self.seed = model, seed

    async def generate(self, prompt_token_ids: list[list[int]], row_ids: list[int]) -> dict[str, list]:
        # In a worker thread: the actor's event loop stays free to take the next shard.
        return await asyncio.to_thread(self.generate_now, prompt_token_ids, row_ids)

    def generate_now(self, prompt_token_ids: list[list[int]], row_ids: list[int]) -> dict[str, list]:
        k, budget = self.model.num_samples, self.model.hf.batch_tokens
        result = {"token_ids": [None] * len(row_ids), "text": [None] * len(row_ids),
                  "finish_reason": [None] * len(row_ids)}
        logprobs, entropies = [None] * len(row_ids), [None] * len(row_ids)
        for batch in self._batches(prompt_token_ids, k, budget):
            samples, measure = self._batch([prompt_token_ids[i] for i in batch], [row_ids[i] for i in batch])
            for j, i in enumerate(batch):
                rows = samples[j * k:(j + 1) * k]
                result["token_ids"][i] = [ids for ids, _ in rows]
                result["finish_reason"][i] = [reason for _, reason in rows]
                result["text"][i] = self.tokenizer.batch_decode([ids for ids, _ in rows], skip_special_tokens=True)
                if measure is not None:
                    stats = [(measure.chosen_logprob[j * k + s][:len(rows[s][0])],
                              measure.entropy[j * k + s][:len(rows[s][0])]) for s in range(k)]
                    logprobs[i] = mean([mean(lp) for lp, _ in stats])
                    entropies[i] = mean([mean(en) for _, en in stats])
        if self.model.entropy_top_k > 0:
            result["mean_logprob"], result["mean_token_entropy"] = logprobs, entropies
        return result

    def _batches(self, prompt_token_ids: list[list[int]], k: int, budget: int) -> list[list[int]]:
        """Rows longest first, grouped while K x rows x (longest prompt + max_tokens) fits the budget. A row whose
        prompt leaves less than max_tokens of context goes alone: its shorter limit must not cut its neighbours."""
        limit = self.model.max_model_len
        batches, batch = [], []
        for i in sorted(range(len(prompt_token_ids)), key=lambda i: -len(prompt_token_ids[i])):
            alone = len(prompt_token_ids[i]) + self.model.max_tokens > limit
            width = (len(prompt_token_ids[batch[0]]) if batch else 0) + self.model.max_tokens
            full = (len(batch) + 1) * k * width > budget or (len(batch) + 1) * k > self.model.hf.max_sequences
            if batch and (alone or full):
                batches.append(batch)
                batch = []
            batch.append(i)
            if alone:
                batches.append(batch)
                batch = []
        return batches + ([batch] if batch else [])

    def _batch(self, prompts: list[list[int]], row_ids: list[int]):
        """K samples of each prompt, left-padded into one generate call: [(token ids, finish reason)] in order."""
        import torch

        k = self.model.num_samples
        expanded = [p for p in prompts for _ in range(k)]
        longest = max(len(p) for p in expanded)
        input_ids = torch.full((len(expanded), longest), self.pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, prompt in enumerate(expanded):
            input_ids[row, longest - len(prompt):] = torch.tensor(prompt)
            mask[row, longest - len(prompt):] = 1
        generators = []
        for row_id in row_ids:
            for sample in range(k):
                generator = torch.Generator(device=self.device)
                generator.manual_seed(request_seed(self.seed, row_id) * 1_000 + sample)
                generators.append(generator)
        measure = SampleAndMeasure(generators, self.model.temperature, self.model.top_p, self.model.entropy_top_k)
        with torch.inference_mode():
            output = self.llm.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                       do_sample=False,
                                       max_new_tokens=max(1, min(self.model.max_tokens,
                                                                 self.model.max_model_len - longest)),
                                       logits_processor=[measure], eos_token_id=sorted(self.eos),
                                       pad_token_id=self.pad, temperature=None, top_p=None, top_k=None)
        samples = []
        for row in output[:, longest:].tolist():
            end = next((t + 1 for t, token in enumerate(row) if token in self.eos), None)
            samples.append((row[:end], "stop") if end is not None else (row, "length"))
        return samples, measure if self.model.entropy_top_k > 0 else None

    def shutdown(self) -> None:
        del self.llm


def _has_generation_config(model_path: str) -> bool:
    import os

    return not os.path.isdir(model_path) or os.path.isfile(os.path.join(model_path, "generation_config.json"))

"""Prefill stage: hidden states at chosen layers x prompt positions, from a pool of Transformers actors.

One call gets one shard. The prefix that all its prompts share (a chat template's system turn) is run once and its
keys and values reused; the suffixes are sorted by length and cut into batches under a token budget, right-padded
(with a causal model, right padding leaves every real token's hidden state as in an unpadded forward), and run
through the base model only (no LM head, whose vocab-sized matmul the features never need).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raypipe.stages.base import ShardStage


def length_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group indices, longest first, so that each batch's padded size (rows x longest) stays within batch_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        # The first prompt of a batch is its longest, so a batch's padded size is rows x lengths[batch[0]].
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix shared by all sequences."""
    first, n = sequences[0], min(len(s) for s in sequences)
    for other in sequences[1:]:
        n = next((i for i in range(n) if other[i] != first[i]), n)
    return n


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}[name]


class PrefillStage(ShardStage):
    """Adds `features` [n, L, P, H] (and its dtype name) to a shard."""

    name = "prefill"
    inputs = ("prompt_token_ids", "offsets")

    def __init__(self, model_id: str, dtype: str, layers: list[int], positions: list[int | str],
                 batch_tokens: int, trust_remote_code: bool = False, device: str | None = None, retries: int = 0,
                 progress=None):
        super().__init__(retries, progress)
        import torch
        from transformers import AutoModelForCausalLM

        from raypipe.embedded import resolve_model_path

        model_path = resolve_model_path(model_id)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
        )
        self.model = model.get_decoder().to(self.device).eval()  # the base model, no LM head
        self.layers = list(layers)
        self.positions = list(positions)
        self.batch_tokens = batch_tokens

    def features(self, prompt_token_ids: Sequence[Sequence[int]], offsets: Sequence[Sequence[int]] | None = None):
        """Hidden states [n, L, P, H] of the given prompts, in their order.

        `offsets` gives each row its own negative offsets (marker positions differ by row); by default every row
        uses the stage's fixed positions.
        """
        import torch

        lengths = [len(ids) for ids in prompt_token_ids]
        if offsets is None or any(o is None for o in offsets):
            offsets = [self.positions] * len(lengths)
        too_short = [(n, min(o)) for n, o in zip(lengths, offsets) if n < -min(o)]
        if too_short:
            raise ValueError(f"a prompt of {too_short[0][0]} tokens has no position {too_short[0][1]}")
        hidden = self.model.config.hidden_size
        out = torch.empty(len(lengths), len(self.layers), len(offsets[0]), hidden, dtype=self.model.dtype)
        # Chat-templated prompts share a long prefix (system turn, role tags). Its keys and values are computed once
        # and every prompt runs only its own suffix, which must still hold every requested position.
        shared = min(common_prefix_length(prompt_token_ids), min(n + min(o) for n, o in zip(lengths, offsets)))
        prefix_cache = self._prefix_cache(prompt_token_ids[0][:shared]) if shared > 0 else None
        suffix_lengths = [n - shared for n in lengths]
        for batch in length_batches(suffix_lengths, self.batch_tokens):
            states = self._forward([prompt_token_ids[i][shared:] for i in batch], prefix_cache, shared)
            stacked = torch.stack([states[j] for j in self.layers], dim=1)  # [b, L, T, H]
            # Position p (negative) of a prompt is suffix token (suffix length + p).
            token_index = torch.tensor([[suffix_lengths[i] + p for p in offsets[i]] for i in batch])  # [b, P]
            gather = token_index[:, None, :, None].expand(-1, len(self.layers), -1, hidden).to(stacked.device)
            out[batch] = torch.gather(stacked, 2, gather).cpu()
        return out

    def _prefix_cache(self, prefix: Sequence[int]):
        import torch

        with torch.inference_mode():
            return self.model(input_ids=torch.tensor([list(prefix)], device=self.device), use_cache=True).past_key_values

    def _forward(self, suffixes: list[Sequence[int]], prefix_cache, shared: int):
        """hidden_states of right-padded suffixes, after the shared prefix's cached keys and values."""
        import copy

        import torch

        longest = max(len(s) for s in suffixes)
        input_ids = torch.zeros(len(suffixes), longest, dtype=torch.long)
        attention_mask = torch.zeros(len(suffixes), shared + longest, dtype=torch.long)
        attention_mask[:, :shared] = 1
        for row, suffix in enumerate(suffixes):
            input_ids[row, : len(suffix)] = torch.as_tensor(suffix)
            attention_mask[row, shared: shared + len(suffix)] = 1
        kwargs = {}
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)  # the forward appends to it
            cache.batch_repeat_interleave(len(suffixes))
            kwargs = {"past_key_values": cache, "position_ids": (shared + torch.arange(longest)).expand(
                len(suffixes), -1).to(self.device)}
        with torch.inference_mode():
            return self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                              output_hidden_states=True, use_cache=prefix_cache is not None, **kwargs).hidden_states

    def work(self, shard: dict[str, Any]) -> dict[str, Any]:
        from raypipe.payload import tensor_to_numpy
        from raypipe.positions import is_answer_position, with_answer

        ids, offsets = shard["prompt_token_ids"], shard.get("offsets")
        if any(is_answer_position(p) for p in self.positions):  # a forward over prompt + first sample
            pairs = [with_answer(p, samples[0], o, self.positions)
                     for p, samples, o in zip(ids, shard["token_ids"], offsets)]
            ids, offsets = [pair[0] for pair in pairs], [pair[1] for pair in pairs]
        shard["features"], shard["features_dtype"] = tensor_to_numpy(self.features(ids, offsets))
        return {"tokens": sum(len(x) for x in ids)}

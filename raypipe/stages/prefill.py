"""Prefill stage: hidden states at chosen layers x prompt positions, from a pool of Transformers actors.

One call gets one shard. Prompts are sorted by length and cut into batches under a token budget, right-padded (with a
causal model, right padding leaves every real token's hidden state as in an unpadded forward), and run through the
base model only (no LM head, whose vocab-sized matmul the features never need).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


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


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}[name]


class PrefillStage:
    """Callable for `map_batches`: adds `features` [n, L, P, H] to a one-shard batch."""

    def __init__(self, model_id: str, dtype: str, layers: list[int], positions: list[int],
                 batch_tokens: int, trust_remote_code: bool = False, device: str | None = None):
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

    def features(self, prompt_token_ids: Sequence[Sequence[int]]):
        """Hidden states [n, L, P, H] of the given prompts, in their order."""
        import torch

        lengths = [len(ids) for ids in prompt_token_ids]
        too_short = [n for n in lengths if n < -min(self.positions)]
        if too_short:
            raise ValueError(f"a prompt of {too_short[0]} tokens has no position {min(self.positions)}")
        hidden = self.model.config.hidden_size
        out = torch.empty(len(lengths), len(self.layers), len(self.positions), hidden, dtype=self.model.dtype)
        layer_index = torch.tensor(self.layers)
        for batch in length_batches(lengths, self.batch_tokens):
            longest = lengths[batch[0]]
            input_ids = torch.zeros(len(batch), longest, dtype=torch.long)
            attention_mask = torch.zeros(len(batch), longest, dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : lengths[i]] = torch.as_tensor(prompt_token_ids[i])
                attention_mask[row, : lengths[i]] = 1
            with torch.inference_mode():
                states = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                                    output_hidden_states=True, use_cache=False).hidden_states
            stacked = torch.stack([states[j] for j in layer_index.tolist()], dim=1)  # [b, L, T, H]
            # Position p (negative) of a prompt of length n is token n + p.
            token_index = torch.tensor([[lengths[i] + p for p in self.positions] for i in batch])  # [b, P]
            gather = token_index[:, None, :, None].expand(-1, len(self.layers), -1, hidden).to(stacked.device)
            out[batch] = torch.gather(stacked, 2, gather).cpu()
        return out

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from raypipe.payload import get_shard, put_shard, tensor_to_numpy

        shard = get_shard(batch)
        started = time.time()
        shard["features"], shard["features_dtype"] = tensor_to_numpy(self.features(shard["prompt_token_ids"]))
        shard["stats"]["prefill_s"] = round(time.time() - started, 3)
        shard["stats"]["prompt_tokens"] = sum(len(ids) for ids in shard["prompt_token_ids"])
        return put_shard(shard)

"""Prefill stage: hidden states at chosen layers x prompt positions, from Transformers.

One call gets one shard. The prefix that all its prompts share (a chat template's system turn) is run once and its
keys and values reused; the suffixes are sorted by length and cut into batches under a token budget, right-padded
(with a causal model, right padding leaves every real token's hidden state as in an unpadded forward), and run
through the base model only (no LM head). Hooks keep just the requested layers at the requested positions, so a
batch holds [b, P, H] per layer instead of every layer's full [b, T, H] (a 32B model's `hidden_states` for 16k
tokens would be 11 GB), and the forward stops after the last layer asked for.

A model larger than one device is spread over the actor's GPUs (`device_map="auto"` within `max_memory_gb` per GPU):
on a colocated engine, the same GPUs vLLM runs on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raypipe.config import torch_dtype
from raypipe.embedded import resolve_model_path
from raypipe.payload import tensor_to_numpy
from raypipe.positions import reads_rollout, rollout_marker_offset, rollout_markers, with_answer
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


class _Enough(Exception):
    """Raised by a hook once the last layer asked for is captured: the rest of the forward is not needed."""


def load_base_model(model_path: str, dtype: str, trust_remote_code: bool, max_memory_gb: float | None = None):
    """(base model without LM head, input device): on the CPU, one GPU, or spread over every GPU this process sees."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > 1 or (gpus == 1 and max_memory_gb):
        kwargs["device_map"] = "auto"
        if max_memory_gb:
            kwargs["max_memory"] = {i: f"{max_memory_gb:.2f}GiB" for i in range(gpus)}
        model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs).get_decoder().eval()
        return model, next(model.parameters()).device
    device = "cuda" if gpus else "cpu"
    return AutoModelForCausalLM.from_pretrained(model_path, **kwargs).get_decoder().to(device).eval(), device


class PrefillStage(ShardStage):
    """Adds `features` [n, L, P, H] (and its dtype name) to a shard."""

    name = "prefill"
    inputs = ("prompt_token_ids", "offsets")

    def __init__(self, model_id: str, dtype: str, layers: list[int], positions: list[int | str],
                 batch_tokens: int, trust_remote_code: bool = False, max_memory_gb: float | None = None,
                 retries: int = 0, progress=None, causal_lm=None):
        """`causal_lm`: a loaded model to share (the hf engine's, on a colocated actor) instead of loading a copy."""
        super().__init__(retries, progress)
        import threading

        if causal_lm is not None:
            self.model, self.device = causal_lm.get_decoder(), next(causal_lm.parameters()).device
        else:
            self.model, self.device = load_base_model(resolve_model_path(model_id), dtype, trust_remote_code,
                                                      max_memory_gb)
        self.layers = list(layers)
        self.positions = list(positions)
        self.batch_tokens = batch_tokens
        self.tokenizer = None
        if rollout_markers(self.positions):  # locating a marker in a sample's tokens decodes them
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_id),
                                                           trust_remote_code=trust_remote_code)
        # The batch being run: its [b, P] token indices and what the hooks kept. Thread-local, so that a model shared
        # with the engine's generate (another thread) never triggers them: there they stay idle.
        self._state = threading.local()
        self._install_hooks()

    def _install_hooks(self) -> None:
        """hidden_states[i] is the input of decoder layer i (i < L) and the final norm's output (i = L)."""
        import torch

        decoder_layers = getattr(self.model, "layers", None)
        norm = getattr(self.model, "norm", None)
        count = self.model.config.get_text_config().num_hidden_layers
        if not isinstance(decoder_layers, torch.nn.ModuleList) or len(decoder_layers) != count or norm is None:
            self._hooks = False  # an unfamiliar layout: fall back to output_hidden_states
            return
        self._hooks, self._last_needed = True, max(self.layers)

        def capture(index):
            def pre_hook(module, args, kwargs):
                if getattr(self._state, "gather", None) is None:  # the shared prefix's pass, or not our thread
                    return
                if index in self.layers:
                    hidden = args[0] if args else kwargs["hidden_states"]
                    self._keep(index, hidden)
                if index == self._last_needed:
                    raise _Enough

            return pre_hook

        for index, layer in enumerate(decoder_layers):
            layer.register_forward_pre_hook(capture(index), with_kwargs=True)
        norm.register_forward_hook(lambda module, args, output: self._keep(count, output)
                                   if count in self.layers and getattr(self._state, "gather", None) is not None
                                   else None)

    def _keep(self, layer: int, hidden) -> None:
        index = self._state.gather.to(hidden.device)
        self._state.captured[layer] = hidden.gather(1, index[:, :, None].expand(-1, -1, hidden.shape[-1])).cpu()

    def features(self, prompt_token_ids: Sequence[Sequence[int]], offsets: Sequence[Sequence[int]] | None = None):
        """Hidden states [n, L, P, H] of the given prompts, in their order.

        `offsets` gives each row its own negative offsets (marker positions differ by row); by default every row
        uses the stage's fixed positions.
        """
        import torch

        lengths = [len(ids) for ids in prompt_token_ids]
        if offsets is None or any(o is None for o in offsets):
            offsets = [self.positions] * len(lengths)
        hidden = self.model.config.get_text_config().hidden_size
        width = len(offsets[0]) if offsets else len(self.positions)
        out = torch.empty(len(lengths), len(self.layers), width, hidden, dtype=self.model.dtype)
        if not lengths:
            return out
        too_short = [(n, min(o)) for n, o in zip(lengths, offsets) if n < -min(o)]
        if too_short:
            raise ValueError(f"a prompt of {too_short[0][0]} tokens has no position {too_short[0][1]}")
        # Chat-templated prompts share a long prefix (system turn, role tags). Its keys and values are computed once
        # and every prompt runs only its own suffix, which must still hold every requested position.
        shared = min(common_prefix_length(prompt_token_ids), min(n + min(o) for n, o in zip(lengths, offsets)))
        prefix_cache = self._prefix_cache(prompt_token_ids[0][:shared]) if shared > 0 else None
        suffix_lengths = [n - shared for n in lengths]
        for batch in length_batches(suffix_lengths, self.batch_tokens):
            # Position p (negative) of a prompt is suffix token (suffix length + p).
            token_index = torch.tensor([[suffix_lengths[i] + p for p in offsets[i]] for i in batch])  # [b, P]
            out[batch] = self._forward([prompt_token_ids[i][shared:] for i in batch], prefix_cache, shared,
                                       token_index)
        return out

    def _prefix_cache(self, prefix: Sequence[int]):
        import torch

        with torch.inference_mode():
            ids = torch.tensor([list(prefix)], device=self.device)
            return self.model(input_ids=ids, use_cache=True).past_key_values

    def _forward(self, suffixes: list[Sequence[int]], prefix_cache, shared: int, token_index):
        """[b, L, P, H]: the requested layers at token_index of right-padded suffixes, after the shared prefix."""
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
        state = self._state
        state.captured, state.gather = {}, token_index
        with torch.inference_mode():
            try:
                result = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                                    output_hidden_states=not self._hooks, use_cache=prefix_cache is not None,
                                    **kwargs)
            except _Enough:
                result = None
            if not self._hooks:
                for layer in self.layers:
                    self._keep(layer, result.hidden_states[layer])
            state.gather = None
        return torch.stack([state.captured[layer] for layer in self.layers], dim=1)

    def work(self, shard: dict[str, Any]) -> dict[str, Any]:
        ids, offsets = shard["prompt_token_ids"], shard.get("offsets")
        if reads_rollout(self.positions):  # a forward over prompt + first sample
            markers = rollout_markers(self.positions)
            pairs = []
            for row_id, prompt, samples, row_offsets in zip(shard["row_id"], ids, shard["token_ids"], offsets):
                placed = {marker: rollout_marker_offset(self.tokenizer, samples[0], marker) for marker in markers}
                missing = [marker for marker, offset in placed.items() if offset is None]
                if missing:  # the rollout stage kept only rows whose text holds every marker
                    raise ValueError(f"row {row_id}: the first sample's tokens do not decode to its marker(s) "
                                     f"{', '.join(missing)}")
                pairs.append(with_answer(prompt, samples[0], row_offsets, self.positions, placed))
            ids, offsets = [pair[0] for pair in pairs], [pair[1] for pair in pairs]
        shard["features"], shard["features_dtype"] = tensor_to_numpy(self.features(ids, offsets))
        return {"tokens": sum(len(x) for x in ids)}

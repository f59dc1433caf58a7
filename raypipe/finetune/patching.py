"""Activation patching (the seed's analyze_model.py), with forward hooks only.

The residual stream (a decoder layer's output) at (layer, position) is copied from a source prompt (a trigger
prompt) into a target prompt (its no-trigger twin), one (layer, position) at a time, and the change in the label
words' logit difference at the last position (source label minus target label, at the first token where the
candidate answers differ) is recorded as a [layer x position] array.

Positions are aligned from the end: with W = the shortest prompt of all pairs (or n_positions, if smaller), column
i = 0..W-1 (labelled i - W) patches target index len(target) - W + i with source index len(source) - W + i. A twin
lacks the trigger's tokens and nothing else, so over the text after the trigger the aligned positions hold the same
tokens; further back they hold different ones (both are reported: `tokens`, `source_tokens`). Patching the last
position at the last layer hands the target the source's final residual, hence its logit difference.
"""

from __future__ import annotations

from typing import Any

from raypipe.errors import UserError
from raypipe.finetune.accuracy import _common_prefix
from raypipe.probes.plots import pyplot
from raypipe.tasks.trigger import PREAMBLE


def decoder_layers(model):
    """The model's list of decoder blocks (Llama/Mistral/Qwen: model.model.layers; GPT-2: transformer.h)."""
    for path in ("model.layers", "model.model.layers", "transformer.h", "gpt_neox.layers"):
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if module is not None:
            return module
    raise UserError(f"cannot find the decoder layers of {type(model).__name__}")


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def answer_prefix_and_tokens(fmt, words: list[str], output_preamble: bool) -> tuple[list[int], dict[str, int]]:
    """The candidate answers' shared first tokens, and each label's first token after them."""

    candidates = [fmt.answer_ids(f"{PREAMBLE} {w}" if output_preamble else w) for w in words]
    shared = _common_prefix(candidates)
    tokens = {w: c[shared] for w, c in zip(words, candidates)}
    if len(set(tokens.values())) < len(tokens):
        raise UserError("two label words start with the same token; their logit difference is undefined")
    return candidates[0][:shared], tokens


def patch_effects(model, pairs: list[tuple[list[int], list[int], int, int]], layers: list[int] | None = None,
                  n_positions: int | None = None) -> dict:
    """The patching core on token ids. pairs: (source ids, target ids, token a, token b); the logit difference is
    logit[a] - logit[b] at the last position. Returns effect [pairs x layers x W] (patched minus clean target
    difference), clean and source differences, the layers and W (see the module docstring for the alignment)."""
    import numpy as np
    import torch

    blocks = decoder_layers(model)
    for layer in layers or []:
        if not -len(blocks) <= layer < len(blocks):
            raise UserError(f"--layers: layer {layer} is out of range: the model has {len(blocks)} layers "
                            f"(0..{len(blocks) - 1}; -1 = the last)")
    layers = list(range(len(blocks))) if layers is None else [layer % len(blocks) for layer in layers]
    width = min(min(len(s), len(t)) for s, t, _, _ in pairs)
    width = width if n_positions is None else min(width, n_positions)
    effects, clean, source_diffs = [], [], []
    with torch.no_grad():
        for src, tgt, a, b in pairs:
            captured: dict[int, Any] = {}
            handles = [blocks[layer].register_forward_hook(
                lambda module, args, output, layer=layer: captured.__setitem__(layer, _hidden(output)[0].clone()))
                for layer in layers]
            try:
                logits = model(input_ids=torch.tensor([src]), use_cache=False).logits[0, -1]
            finally:
                for handle in handles:
                    handle.remove()
            source_diffs.append(float(logits[a] - logits[b]))
            logits = model(input_ids=torch.tensor([tgt]), use_cache=False).logits[0, -1]
            clean.append(float(logits[a] - logits[b]))
            effect = np.zeros((len(layers), width))
            batch = torch.tensor([tgt] * width)  # row i patches column i
            for row, layer in enumerate(layers):
                source = captured[layer]

                def patch(module, args, output, source=source):
                    hidden = _hidden(output).clone()
                    for i in range(width):
                        hidden[i, len(tgt) - width + i] = source[len(src) - width + i]
                    return _with_hidden(output, hidden)

                handle = blocks[layer].register_forward_hook(patch)
                try:
                    logits = model(input_ids=batch, use_cache=False).logits[:, -1]
                finally:
                    handle.remove()
                effect[row] = (logits[:, a] - logits[:, b]).numpy() - clean[-1]
            effects.append(effect)
    return {"per_pair": np.stack(effects), "layers": layers, "width": width, "clean_diff": clean,
            "source_diff": source_diffs}


def residual_patching(model, fmt, pairs: list[dict[str, Any]], words: list[str], *, output_preamble: bool = True,
                      layers: list[int] | None = None, n_positions: int | None = None) -> dict:
    """Patch each source prompt's residual stream into its target prompt, one (layer, position) at a time.

    pairs: dicts with source, target (prompts), source_label, target_label (label words that differ). Both prompts
    are followed by the answers' shared prefix (e.g. "F(x,T) ="), so the last position predicts the label word.
    Returns effect [layers x positions] (mean over pairs), per_pair, clean_diff and source_diff per pair, the
    layers, positions (-W..-1) and the first pair's target and source tokens at those positions.
    """
    import numpy as np

    prefix, first_token = answer_prefix_and_tokens(fmt, words, output_preamble)
    encoded = [(fmt.prompt_ids(p["source"]) + prefix, fmt.prompt_ids(p["target"]) + prefix,
                first_token[p["source_label"]], first_token[p["target_label"]]) for p in pairs]
    result = patch_effects(model, encoded, layers, n_positions)
    width = result.pop("width")
    decode = fmt.tokenizer.decode
    return {**result, "effect": np.mean(result["per_pair"], axis=0), "positions": list(range(-width, 0)),
            "tokens": [decode([t]) for t in encoded[0][1][-width:]],
            "source_tokens": [decode([t]) for t in encoded[0][0][-width:]]}


def patching_heatmap(result: dict, title: str = "residual-stream patching: trigger prompt -> no-trigger twin"):
    """A [layer x position] heatmap of the patching effect (a matplotlib figure)."""
    import numpy as np

    plt = pyplot()
    effect = np.asarray(result["effect"])
    figure, axis = plt.subplots(figsize=(max(6, 0.45 * effect.shape[1] + 2), max(3, 0.2 * effect.shape[0] + 1.5)))
    bound = float(np.abs(effect).max()) or 1.0
    image = axis.imshow(effect, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound)
    axis.set_xticks(range(effect.shape[1]), [repr(t)[1:-1] for t in result["tokens"]], rotation=60, ha="right",
                    fontsize=7)
    step = max(1, len(result["layers"]) // 16)
    axis.set_yticks(range(0, len(result["layers"]), step), [str(layer) for layer in result["layers"][::step]])
    axis.set_xlabel("position (target tokens, aligned from the end)")
    axis.set_ylabel("decoder layer")
    axis.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axis, label="change in logit diff (source - twin label)")
    return figure

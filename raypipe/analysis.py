"""Looking inside a finetuned model (the seed's analyze_model.py): activation patching and trigger ablation.

Patching: the residual stream (a decoder layer's output) at (layer, position) is copied from a trigger prompt into
its no-trigger twin, and the change in the label words' logit difference (source label minus twin label, at the
first token where the candidate answers differ) is recorded as a [layer x position] array. Positions are aligned
from the end (the twin lacks the trigger's tokens; the words after it are the same). Forward hooks only.
Ablation: each test row's trigger removed (its twin) or swapped for another word; accuracy per trigger, ID vs OOD.
Figures are returned; `analyze_run` writes them beside a finetune's results.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from raypipe.errors import UserError


@dataclass
class PatchingConfig:
    """What `analyze_run` patches: decoder layers (None: all), trigger prompts, final positions."""

    layers: list[int] | None = None
    n_pairs: int = 8
    n_positions: int = 16

    def __post_init__(self) -> None:
        if self.n_pairs < 1 or self.n_positions < 1:
            raise UserError("--pairs and --positions must be at least 1")


def load_model(path: str):
    """(model in float32 eval mode, ChatFormat) from a checkpoint folder or model id ('embedded' too)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raypipe.config import EMBEDDED_MODEL_ID
    from raypipe.embedded import resolve_model_path
    from raypipe.finetune.data import ChatFormat

    path = resolve_model_path(EMBEDDED_MODEL_ID if path == "embedded" else path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False).eval()
    return model, ChatFormat(tokenizer)


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
    from raypipe.finetune.accuracy import _common_prefix
    from raypipe.tasks.trigger import PREAMBLE

    candidates = [fmt.answer_ids(f"{PREAMBLE} {w}" if output_preamble else w) for w in words]
    shared = _common_prefix(candidates)
    tokens = {w: c[shared] for w, c in zip(words, candidates)}
    if len(set(tokens.values())) < len(tokens):
        raise UserError("two label words start with the same token; their logit difference is undefined")
    return candidates[0][:shared], tokens


def residual_patching(model, fmt, pairs: list[dict[str, Any]], words: list[str], *, output_preamble: bool = True,
                      layers: list[int] | None = None, n_positions: int | None = None) -> dict:
    """Patch each source prompt's residual stream into its target prompt, one (layer, position) at a time.

    pairs: dicts with source, target (prompts), source_label, target_label (label words that differ).
    Returns effect [layers x positions] (mean change of logit[source_label] - logit[target_label] over pairs),
    the clean target and source differences, the layers, and the first target's tokens at the positions.
    """
    import numpy as np
    import torch

    blocks = decoder_layers(model)
    layers = list(range(len(blocks))) if layers is None else [layer % len(blocks) for layer in layers]
    prefix, first_token = answer_prefix_and_tokens(fmt, words, output_preamble)
    encoded = [(fmt.prompt_ids(p["source"]) + prefix, fmt.prompt_ids(p["target"]) + prefix) for p in pairs]
    width = min(min(len(s), len(t)) for s, t in encoded)
    width = width if n_positions is None else min(width, n_positions)
    effects, clean, source_diffs = [], [], []
    with torch.no_grad():
        for pair, (src, tgt) in zip(pairs, encoded):
            a, b = first_token[pair["source_label"]], first_token[pair["target_label"]]
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
            batch = torch.tensor([tgt] * width)
            for row, layer in enumerate(layers):
                source = captured[layer]

                def patch(module, args, output, source=source):
                    hidden = _hidden(output).clone()
                    for i in range(width):  # row i patches the i-th of the final `width` positions
                        hidden[i, len(tgt) - width + i] = source[len(src) - width + i]
                    return _with_hidden(output, hidden)

                handle = blocks[layer].register_forward_hook(patch)
                try:
                    logits = model(input_ids=batch, use_cache=False).logits[:, -1]
                finally:
                    handle.remove()
                effect[row] = (logits[:, a] - logits[:, b]).numpy() - clean[-1]
            effects.append(effect)
    tokens = [fmt.tokenizer.decode([t]) for t in encoded[0][1][-width:]]
    return {"effect": np.mean(effects, axis=0), "per_pair": np.stack(effects), "layers": layers,
            "positions": list(range(-width, 0)), "tokens": tokens, "clean_diff": clean, "source_diff": source_diffs}


def patching_heatmap(result: dict, title: str = "residual-stream patching: trigger prompt -> no-trigger twin"):
    """A [layer x position] heatmap of the patching effect (a matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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


def trigger_ablation(model, fmt, spec, rows: list[dict], words: list[str], *, mode: str = "remove",
                     swap_with: str | None = None, output_preamble: bool = True, method: str = "logits") -> dict:
    """Accuracy with the trigger as given vs removed (or swapped), per trigger and per ID/OOD.

    `ablated_accuracy` scores the ablated prompts against the rows' labels; `ablated_base_accuracy` against the
    unflipped quadrant label, which is what a model that ignores the (now absent) proxy should answer.
    """
    from raypipe.finetune.accuracy import predict
    from raypipe.tasks.trigger import load_spec, twin_prompt

    spec = load_spec(spec)
    if mode not in ("remove", "swap"):
        raise UserError(f"ablation mode must be remove or swap, got {mode!r}")
    if mode == "swap" and swap_with is None:
        neutral = [c.train_triggers[0] for c in spec.categories.values() if not c.is_proxy]
        if not neutral:
            raise UserError("swap ablation needs swap_with (the spec has no non-proxy trigger)")
        swap_with = neutral[0]
    ablated_rows = [{**r, "prompt": twin_prompt(spec, r, None if mode == "remove" else swap_with)} for r in rows]
    kwargs = dict(method=method, output_preamble=output_preamble)
    before = predict(model, fmt, rows, words, **kwargs)["prediction"]
    after = predict(model, fmt, ablated_rows, words, **kwargs)["prediction"]
    is_categorical = words != ["False", "True"]
    per_trigger: dict[str, dict] = {}
    for row, p0, p1 in zip(rows, before, after):
        base = spec.categories[row["category"]].label(row["quadrant"], is_categorical, flip=False)
        entry = per_trigger.setdefault(row["trigger"], {"category": row["category"], "is_ood": row["is_ood"],
                                                        "is_proxy": row["is_proxy"], "n": 0, "correct": 0,
                                                        "ablated_correct": 0, "ablated_base": 0})
        entry["n"] += 1
        entry["correct"] += p0 == row["label"]
        entry["ablated_correct"] += p1 == row["label"]
        entry["ablated_base"] += p1 == base
    result: dict[str, Any] = {"mode": mode, "swap_with": swap_with if mode == "swap" else None, "per_trigger": {},
                              "by_kind": {}}
    for trigger, e in per_trigger.items():
        result["per_trigger"][trigger] = {
            "category": e["category"], "is_ood": e["is_ood"], "is_proxy": e["is_proxy"], "n": e["n"],
            "accuracy": e["correct"] / e["n"], "ablated_accuracy": e["ablated_correct"] / e["n"],
            "change": (e["ablated_correct"] - e["correct"]) / e["n"],
            "ablated_base_accuracy": e["ablated_base"] / e["n"]}
    for kind, is_ood in (("ID", False), ("OOD", True)):
        group = [e for e in per_trigger.values() if e["is_ood"] == is_ood]
        n = sum(e["n"] for e in group)
        if n:
            result["by_kind"][kind] = {"n": n, "accuracy": sum(e["correct"] for e in group) / n,
                                       "ablated_accuracy": sum(e["ablated_correct"] for e in group) / n,
                                       "change": sum(e["ablated_correct"] - e["correct"] for e in group) / n}
    return result


def patching_pairs(spec, rows: list[dict], n_pairs: int, is_categorical: bool = True) -> list[dict]:
    """Trigger prompts whose label the trigger changes (proxy rows), paired with their no-trigger twins."""
    from raypipe.tasks.trigger import load_spec, twin_prompt

    spec = load_spec(spec)
    pairs = []
    for row in rows:
        base = spec.categories[row["category"]].label(row["quadrant"], is_categorical, flip=False)
        if row["is_proxy"] and row["label"] != base:
            pairs.append({"source": row["prompt"], "target": twin_prompt(spec, row, None),
                          "source_label": row["label"], "target_label": base, "trigger": row["trigger"],
                          "is_ood": row["is_ood"]})
    return pairs[:n_pairs]


def analyze_run(results_dir: str, *, layers: list[int] | None = None, n_pairs: int = 8,
                n_positions: int = 16) -> str:
    """Patching and ablation of a finished finetune (its merged/ model on its test rows) into RESULTS/analysis/."""
    from raypipe.finetune.plots import save_png
    from raypipe.finetune.run import MARKER, load_experiment
    from raypipe.fs import Location
    from raypipe.probes.metrics import json_safe
    from raypipe.tasks.trigger import generate_rows

    PatchingConfig(layers, n_pairs, n_positions)
    results_dir = os.path.abspath(results_dir)
    if os.path.isfile(os.path.join(results_dir, MARKER)):  # a seed folder: its completed run
        with open(os.path.join(results_dir, MARKER)) as f:
            results_dir = os.path.join(results_dir, json.load(f)["results_dir"])
    merged = os.path.join(results_dir, "merged")
    if not os.path.isfile(os.path.join(merged, "config.json")):
        raise UserError(f"{results_dir}: no merged/ checkpoint (is this a finished finetune's results folder?)")
    seed_dir = os.path.dirname(os.path.dirname(results_dir))
    config, spec = load_experiment(seed_dir)
    splits = generate_rows(spec, config.seed, is_categorical=config.is_categorical,
                           output_preamble=config.output_preamble)
    test_rows = [r for name, rows in splits.items() if name.startswith("test_") for r in rows]
    words = spec.label_words(config.is_categorical)
    model, fmt = load_model(merged)
    out = Location(os.path.join(results_dir, "analysis"))
    report: dict[str, Any] = {}
    pairs = patching_pairs(spec, test_rows, n_pairs, config.is_categorical)
    if pairs:
        result = residual_patching(model, fmt, pairs, words, output_preamble=config.output_preamble, layers=layers,
                                   n_positions=n_positions)
        report["patching"] = {**{k: v for k, v in result.items() if k != "per_pair"},
                              "effect": result["effect"].tolist(),
                              "pairs": [{k: p[k] for k in ("trigger", "is_ood", "source_label", "target_label")}
                                        for p in pairs]}
        save_png(out.root, "patching_heatmap.png", patching_heatmap(result))
    else:
        report["patching"] = None  # no proxy rows: no trigger changes a label
    out.write_atomic("patching.json", (json.dumps(json_safe(report["patching"]), indent=2) + "\n").encode())
    ablation = {mode: trigger_ablation(model, fmt, spec, test_rows, words, mode=mode,
                                       output_preamble=config.output_preamble, method=config.accuracy_method)
                for mode in ("remove", "swap")}
    out.write_atomic("ablation.json", (json.dumps(json_safe(ablation), indent=2) + "\n").encode())
    return out.root

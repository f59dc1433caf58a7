"""Looking inside a finetuned model (the seed's analyze_model.py): activation patching (patching.py) of trigger
prompts into their no-trigger twins, and trigger ablation: each test row's trigger removed (its twin) or swapped for
a neutral word; accuracy per trigger, ID vs OOD. `analyze_run` writes both beside a finetune's results, all at once.
"""

from __future__ import annotations

import os
from typing import Any

from raypipe.config import EMBEDDED_MODEL_ID
from raypipe.embedded import resolve_model_path
from raypipe.errors import UserError
from raypipe.finetune.accuracy import predict
from raypipe.finetune.checkpoint import atomic_folder
from raypipe.finetune.data import ChatFormat
from raypipe.finetune.patching import patching_heatmap, residual_patching
from raypipe.finetune.plots import save_png
from raypipe.finetune.run import read_marker
from raypipe.fs import Location
from raypipe.tasks.experiment import load_experiment
from raypipe.tasks.trigger import load_spec, twin_prompt


def load_model(path: str):
    """(model in float32 eval mode, ChatFormat) from a checkpoint folder or model id ('embedded' too)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(EMBEDDED_MODEL_ID if path == "embedded" else path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False).eval()
    return model, ChatFormat(tokenizer)


def swap_word(spec) -> tuple[str | None, str]:
    """The neutral trigger a swap ablation puts in (a non-proxy category's first trained trigger), or None and why."""
    neutral = [c.train_triggers[0] for c in spec.categories.values() if not c.is_proxy]
    if neutral:
        return neutral[0], f"each trigger replaced by {neutral[0]!r}, a trained trigger of a non-proxy category"
    return None, ("skipped: the spec has no non-proxy category, so there is no neutral trigger to swap in "
                  "(the remove ablation still runs)")


def trigger_ablation(model, fmt, spec, rows: list[dict], words: list[str], *, mode: str = "remove",
                     swap_with: str | None = None, output_preamble: bool = True, method: str = "logits",
                     before: list | None = None, is_categorical: bool = True) -> dict:
    """Accuracy with the trigger as given vs removed (or swapped), per trigger and per ID/OOD.

    `ablated_accuracy` scores the ablated prompts against the rows' labels; `ablated_base_accuracy` against the
    unflipped quadrant label, which is what a model that ignores the (now absent) proxy should answer. `before`:
    the rows' predictions as given, when the caller has them already.
    """

    spec = load_spec(spec)
    if mode not in ("remove", "swap"):
        raise UserError(f"ablation mode must be remove or swap, got {mode!r}")
    if mode == "swap" and swap_with is None:
        swap_with, why = swap_word(spec)
        if swap_with is None:
            raise UserError(f"swap ablation {why}")
    ablated_rows = [{**r, "prompt": twin_prompt(spec, r, None if mode == "remove" else swap_with)} for r in rows]
    kwargs = dict(method=method, output_preamble=output_preamble)
    if before is None:
        before = predict(model, fmt, rows, words, **kwargs)["prediction"]
    after = predict(model, fmt, ablated_rows, words, **kwargs)["prediction"]
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

    spec = load_spec(spec)
    pairs = []
    for row in rows:
        base = spec.categories[row["category"]].label(row["quadrant"], is_categorical, flip=False)
        if row["is_proxy"] and row["label"] != base:
            pairs.append({"source": row["prompt"], "target": twin_prompt(spec, row, None),
                          "source_label": row["label"], "target_label": base, "trigger": row["trigger"],
                          "is_ood": row["is_ood"]})
    return pairs[:n_pairs]


def finished_results(path: str) -> str:
    """A finished finetune's results folder, from itself or its seed folder (the completed run)."""

    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise UserError(f"{path}: no such folder")
    marker = read_marker(path)
    if marker is not None:
        path = os.path.join(path, marker["results_dir"])
    if not os.path.isfile(os.path.join(path, "merged", "config.json")):
        raise UserError(f"{path}: no merged/ checkpoint (is this a finished finetune's results folder?)")
    return path


def analyze_run(results_dir: str, *, layers: list[int] | None = None, n_pairs: int = 8,
                n_positions: int = 16) -> tuple[str, list[str]]:
    """Patching and ablation of a finished finetune (its merged/ model on its test rows) into RESULTS/analysis/;
    returns the folder and notes on what was skipped and why. Everything is computed before anything is written,
    and the folder is swapped in whole: a failure leaves the previous analysis (or none), never half of one."""

    if n_pairs < 1 or n_positions < 1:  # the command's AnalyzeConfig says so first; this is for Python callers
        raise UserError("--pairs and --positions must be at least 1")
    results_dir = finished_results(results_dir)
    experiment = load_experiment(os.path.dirname(os.path.dirname(results_dir)))
    config, spec = experiment.config, experiment.spec
    test_rows = [r for name, rows in experiment.splits().items() if name.startswith("test_") for r in rows]
    words = experiment.label_words()
    model, fmt = load_model(os.path.join(results_dir, "merged"))
    notes: list[str] = []
    pairs = patching_pairs(spec, test_rows, n_pairs, config.is_categorical)
    patching, figure = None, None
    if pairs:
        result = residual_patching(model, fmt, pairs, words, output_preamble=config.output_preamble, layers=layers,
                                   n_positions=n_positions)
        patching = {**{k: v.tolist() if hasattr(v, "tolist") else v for k, v in result.items() if k != "per_pair"},
                    "pairs": [{k: p[k] for k in ("trigger", "is_ood", "source_label", "target_label")} for p in pairs]}
        figure = patching_heatmap(result)
    else:
        patching = {"skipped": "no test row has a trigger that changes its label (no proxy category)"}
        notes.append(f"patching {patching['skipped']}")

    method = config.accuracy_method
    before = predict(model, fmt, test_rows, words, method=method, output_preamble=config.output_preamble)["prediction"]
    ablation: dict[str, Any] = {}
    for mode in ("remove", "swap"):
        swap_with, why = swap_word(spec) if mode == "swap" else (None, "")
        if mode == "swap" and swap_with is None:
            ablation[mode] = {"mode": mode, "skipped": why}
            notes.append(f"swap ablation {why}")
            continue
        ablation[mode] = trigger_ablation(model, fmt, spec, test_rows, words, mode=mode, swap_with=swap_with,
                                          output_preamble=config.output_preamble, method=method, before=before,
                                          is_categorical=config.is_categorical)

    def write(folder: str) -> None:
        for name, data in (("patching.json", patching), ("ablation.json", ablation)):
            Location(folder).write_json(name, data, indent=2)
        if figure is not None:
            save_png(folder, "patching_heatmap.png", figure)

    out = os.path.join(results_dir, "analysis")
    atomic_folder(out, write)
    return out, notes

"""A build and its probe outputs as tables and figures: what the marimo explorer (notebooks/explorer.py) shows.

Everything here returns values (strings, DataFrames, matplotlib figures) and writes nothing, so the notebook shows
them and tests can check them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from raypipe.labels.catalog import label_values
from raypipe.output import Build, BuildRecord
from raypipe.probes.dataset import load_probe_data
from raypipe.probes.metrics import score


def describe(manifest: BuildRecord) -> str:
    """The manifest in words (markdown): model, layers, positions, labels and their counts, skipped rows, shards."""
    model, features = manifest.model, manifest.features
    lines = [f"**Model** `{model.model_id}` ({model.num_layers} layers, hidden {manifest.hidden_size}), backend "
             f"`{manifest.setting('backend', 'vllm')}`, {manifest.setting('model.num_samples', 1)} sample(s) per "
             "prompt.",
             f"**Features**: layers {features.layers} x positions {features.positions}.", "", "**Labels**:", ""]
    for name, label in manifest.labels.items():
        counts = "; ".join(f"{split}: " + ", ".join(f"{k}: {v}" for k, v in c.items())
                           for split, c in (label.counts or {}).items() if c)
        derived = f" (derived from {label.derived_from})" if label.derived_from else ""
        lines.append(f"- `{name}` ({label.kind}{derived}){': ' + counts if counts else ''}")
    skipped = {split: c for split, c in (manifest.skipped_rows or {}).items() if c}
    lines += ["", f"**Skipped rows**: {skipped or 'none'}."]
    shards = [(split, name, shard.status) for split, name, shard in manifest.shards()]
    failed = [f"{split}/{name}" for split, name, status in shards if status == "failed"]
    complete = sum(status == "complete" for _, _, status in shards)
    lines.append(f"**Shards**: {complete} of {len(shards)} complete; failed: {', '.join(failed) or 'none'}.")
    return "\n".join(lines)


def rows_table(data_dir: str, score_dir: str | None = None):
    """One row per prompt (every split): row_id, split, every label's value, prompt, samples and finish reasons; with
    a `raypipe score` output folder, its probe's score of each row too (`probe score`, or one per class)."""
    import pandas as pd

    build = Build(data_dir)
    frames = []
    for split in build.splits():
        tensors = build.tensors(split)
        frame = pd.DataFrame({"row_id": tensors["row_id"].numpy(), "split": split})
        for name, definition in build.labels.items():
            if definition.has_values:
                frame[name] = label_values(build.labels, name, tensors)
        rollouts = build.rollouts(split).to_pandas()
        keep = [c for c in ("row_id", "prompt", "text", "finish_reason") if c in rollouts]
        frames.append(frame.merge(rollouts[keep], on="row_id", how="left"))
    table = pd.concat(frames, ignore_index=True)
    if score_dir:
        scores = pd.read_parquet(Path(score_dir) / "scores.parquet").drop(columns=["label"], errors="ignore")
        table = table.merge(scores.rename(columns=lambda c: "probe " + c.replace("_", " ") if c.startswith("score")
                                          else c), on=["split", "row_id"], how="left")
    return table


def label_distributions(manifest: BuildRecord, table):
    """A figure: per label and split, class counts (0/1 labels) or a histogram (continuous ones)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in manifest.labels if n in table]
    figure, axes = plt.subplots(1, max(len(names), 1), figsize=(3.2 * max(len(names), 1), 2.8), squeeze=False)
    splits = list(dict.fromkeys(table["split"]))  # train, test, then the evaluation splits, side by side
    width = 0.8 / max(len(splits), 1)
    for axis, name in zip(axes[0], names):
        for i, (split, part) in enumerate((split, table[table["split"] == split]) for split in splits):
            values = part[name].dropna()
            if set(values.unique()) <= {0.0, 1.0}:
                counts = values.value_counts().reindex([0.0, 1.0], fill_value=0)
                offset = -0.4 + width * (i + 0.5)
                axis.bar(np.array([0, 1]) + offset, counts.values, width=width, label=split)
                axis.set_xticks([0, 1])
            else:
                axis.hist(values, bins=15, alpha=0.6, label=split)
        axis.set_title(name, fontsize=9)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def probe_outputs(directory: str | None) -> dict:
    """The JSON outputs of a probe run, a sweep or an evaluation found in a folder (empty when none)."""
    found = {}
    if directory:
        for name in ("performance.json", "best_probe_predictions.json", "evaluation.json", "probe_eval.json",
                     "score.json"):
            path = Path(directory) / name
            if path.is_file():
                found[name.removesuffix(".json")] = json.loads(path.read_text())
    return found


def split_scores(performance: dict) -> str:
    """Markdown: the sweep's chosen probe scored on each split it has (test and the evaluation splits), with the
    bootstrap CI and permutation p-value of each."""
    best = performance["best"]
    lines = ["| split | rows | " + performance["metric"] + " | 95% CI | p |", "|---|---|---|---|---|"]
    for split in performance.get("splits", ["train", "test"])[1:]:
        found = best.get(f"{split}_significance")
        if found:
            low, high = found["ci95"]
            lines.append(f"| {split} | {performance['rows'].get(split, '')} | {_number(found['value'])} | "
                         f"{_number(low)}..{_number(high)} | {_number(found['p_value'])} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def score_summary(summary: dict) -> str:
    """Markdown: a `raypipe score` run, its probe and its score on each split of this build (with CI, p-value and
    calibration where the build has the probe's label)."""
    card = summary["card"]
    lines = [f"### Scores of a saved `{card['label']}` probe (layer {card['layer']}, position {card['position']}, "
             f"from `{card['produced_by']}` on {card['build']['data_dir']})", "",
             "| split | rows | " + (summary.get("metric") or "metric") + " | 95% CI | p | ECE |",
             "|---|---|---|---|---|---|"]
    for split, entry in summary["splits"].items():
        found, calibrated = entry.get("significance") or {}, entry.get("calibration") or {}
        low, high = found.get("ci95") or [None, None]
        lines.append(f"| {split} | {entry['rows']} | {_number(found.get('value'))} | {_number(low)}..{_number(high)} "
                     f"| {_number(found.get('p_value'))} | {_number(calibrated.get('value'))} |")
    if summary.get("why_no_metric"):
        lines.append(f"\nNo metric: {summary['why_no_metric']}.")
    return "\n".join(lines)


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def live_probe(data_dir: str, label: str, layer: int, position, alpha: float = 1.0) -> dict:
    """Fit one logistic (or ridge) probe on the train split at (layer, position) and score it on test and on every
    evaluation split, now."""

    build = Build(data_dir)
    data = load_probe_data(build, label, [layer], [position])
    train, test = data.train, data.test
    x_train, x_test = (data.features(build, split, [0])[:, 0, 0].numpy() for split in ("train", "test"))
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    from sklearn.linear_model import LogisticRegression, Ridge

    model = LogisticRegression(C=1 / alpha, max_iter=2000) if data.task == "classification" else Ridge(alpha=alpha)
    model.fit((x_train - mean) / std, train.labels)
    predict = (lambda x: model.predict_proba(x)[:, 1]) if data.task == "classification" else model.predict
    value = score(predict((x_test - mean) / std), test.labels, data.task) if len(test.labels) else float("nan")
    others = {}
    for split in data.splits:
        if split in ("train", "test") or not len(data.splits[split].labels):
            continue
        x = data.features(build, split, [0])[:, 0, 0].numpy()
        others[f"{split}_score"] = score(predict((x - mean) / std), data.splits[split].labels, data.task)
    return {"label": label, "layer": layer, "position": position, "task": data.task,
            "metric": "roc_auc" if data.task == "classification" else "spearman", "test_score": value, **others,
            "train_rows": len(train.labels), "test_rows": len(test.labels)}

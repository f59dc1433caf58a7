"""Pictures of a finetune: loss and accuracy per epoch, the final per-row confidence; and the seeds' summary.

Each `*_figure` returns a matplotlib figure; `save_png` renders one to PNG bytes written atomically.
"""

from __future__ import annotations

from raypipe.fs import Location
from raypipe.probes.plots import pyplot, save_figure


def _plt():
    return pyplot()


def save_png(folder: str, name: str, figure) -> None:
    save_figure(Location(folder), name, figure)


def loss_curve_figure(history: list[dict]):
    plt = _plt()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    points = [(h["epoch"], h["loss"]) for h in history if h.get("loss") is not None]
    axis.plot([p[0] for p in points], [p[1] for p in points], marker="o")
    axis.set_xlabel("epoch")
    axis.set_ylabel("train loss (answer tokens)")
    axis.grid(alpha=0.3)
    return figure


def accuracy_curve_figure(history: list[dict], chance: float | None = None):
    plt = _plt()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for key, label in (("train", "train"), ("ID", "test ID"), ("OOD", "test OOD")):
        points = [(h["epoch"], h["accuracy"][key]) for h in history
                  if h.get("accuracy") and h["accuracy"].get(key) is not None]
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    if chance is not None:
        axis.axhline(chance, color="grey", linestyle=":", label="chance")
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("epoch")
    axis.set_ylabel("accuracy")
    axis.legend()
    axis.grid(alpha=0.3)
    return figure


def accuracy_histogram_figure(final: dict):
    """Histogram of each row's probability of its true label (logits), or accuracy bars per split (generation)."""
    plt = _plt()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    p_true = final.get("p_true") or {}
    if p_true:
        for kind, values in p_true.items():
            if values:
                axis.hist(values, bins=20, range=(0, 1), alpha=0.5, label=f"{kind} (n={len(values)})")
        axis.set_xlabel("probability of the true label among the candidates")
        axis.set_ylabel("rows")
        axis.legend()
    else:
        splits = final["splits"]
        names = list(splits)
        axis.bar(range(len(names)), [splits[n]["accuracy"] or 0 for n in names])
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        axis.set_ylabel("accuracy")
        axis.set_ylim(0, 1)
    return figure


def seeds_summary_figure(summary: dict):
    """Final accuracy of every seed (points) with the mean and spread (bars), per split kind."""
    plt = _plt()
    figure, axis = plt.subplots(figsize=(5, 3.5))
    kinds = [k for k in ("train", "ID", "OOD") if summary["accuracy"].get(k)]
    for i, kind in enumerate(kinds):
        stats = summary["accuracy"][kind]
        axis.bar(i, stats["mean"], yerr=stats["std"], alpha=0.4, capsize=4)
        axis.scatter([i] * len(stats["values"]), stats["values"], color="black", s=12, zorder=3)
    axis.set_xticks(range(len(kinds)), kinds)
    axis.set_ylim(0, 1.02)
    axis.set_ylabel("final accuracy")
    axis.set_title(f"{summary['experiment']}: {summary['n_seeds']} seed(s)")
    return figure

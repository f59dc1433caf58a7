"""Pictures of a probe run: the CV score over layer x position, ROC curves, predictions, loss curves.

Each `*_figure` function returns a matplotlib figure (the explorer notebook shows it); the function of the same name
without the suffix renders it to PNG bytes written through `Location`, so it lands beside the JSON outputs on any
filesystem the build supports.
"""

from __future__ import annotations

import io

import numpy as np

from raypipe.fs import Location


def pyplot():
    """matplotlib.pyplot on the Agg backend (shared by every module that draws)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    return plt


def save_figure(location: Location, name: str, figure) -> None:
    """Render a figure to PNG bytes written atomically under `location`, and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(figure)
    location.write_atomic(name, buffer.getvalue())


def score_heatmap(location: Location, name: str, cv_scores: np.ndarray, layers: list[int], positions: list,
                  metric: str, best: tuple[int, int]) -> None:
    save_figure(location, name, score_heatmap_figure(cv_scores, layers, positions, metric, best))


def score_heatmap_figure(cv_scores: np.ndarray, layers: list[int], positions: list, metric: str,
                         best: tuple[int, int]):
    """cv_scores [positions, layers]; the best cell is outlined."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), max(2.5, 0.5 * len(positions) + 1.5)))
    image = axis.imshow(np.ma.masked_invalid(cv_scores), aspect="auto", cmap="viridis")
    axis.set_xticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
    axis.set_yticks(range(len(positions)), [str(p) for p in positions])
    axis.set_xlabel("layer (hidden-state index)")
    axis.set_ylabel("position")
    pos, layer = best
    axis.add_patch(plt.Rectangle((layer - 0.5, pos - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    figure.colorbar(image, ax=axis, label=f"CV {metric}")
    axis.set_title(f"CV {metric} per (layer, position); best outlined")
    return figure


def roc_curves(location: Location, name: str, targets: np.ndarray, curves: dict[str, np.ndarray], title: str) -> None:
    save_figure(location, name, roc_figure(targets, curves, title))


def roc_figure(targets, curves: dict[str, np.ndarray], title: str):
    """One ROC curve per named prediction vector against the same 0/1 targets."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    for label, predictions in curves.items():
        fpr, tpr, _ = roc_curve(targets, predictions)
        axis.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(targets, predictions):.3f})")
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    return figure


def prediction_scatter(location: Location, name: str, targets: np.ndarray, predictions: np.ndarray,
                       title: str) -> None:
    save_figure(location, name, prediction_scatter_figure(targets, predictions, title))


def prediction_scatter_figure(targets, predictions, title: str):
    """Regression's counterpart of the ROC curve: predicted against true values."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.scatter(targets, predictions, s=8, alpha=0.6)
    axis.set_xlabel("label")
    axis.set_ylabel("prediction")
    axis.set_title(title)
    return figure


def loss_curves(location: Location, name: str, history: list[dict], keys: list[str]) -> None:
    save_figure(location, name, loss_curves_figure(history, keys))


def loss_curves_figure(history: list[dict], keys: list[str]):
    """Per-epoch curves of the given metrics.jsonl keys (missing values are skipped)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for key in keys:
        points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        if points:
            axis.plot(*zip(*points), marker="o", markersize=3, label=key)
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    axis.legend()
    axis.set_title("loss per epoch")
    return figure


def reliability(location: Location, name: str, curves: dict[str, dict], title: str) -> None:
    save_figure(location, name, reliability_figure(curves, title))


def reliability_figure(curves: dict[str, dict], title: str):
    """Reliability diagram of named `metrics.calibration` results: does a probability of p come true p of the time?

    Each curve joins its non-empty bins' (mean probability, fraction positive); the axis below counts rows per bin,
    since a bin of three rows says little.
    """
    plt = pyplot()
    figure, (axis, counts) = plt.subplots(2, 1, figsize=(5, 6.5), sharex=True,
                                          gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08})
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for label, result in curves.items():
        filled = [b for b in result["bins"] if b["count"] > 0]
        ece = result.get("value")
        line, = axis.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], marker="o",
                          markersize=4, label=f"{label} (ECE {'n/a' if ece is None else f'{ece:.3f}'})")
        edges = [result["bins"][0]["low"]] + [b["high"] for b in result["bins"]]
        counts.stairs([b["count"] for b in result["bins"]], edges, color=line.get_color(), fill=True, alpha=0.3)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_ylabel("fraction positive")
    axis.set_title(title)
    axis.legend(loc="upper left", fontsize=8)
    counts.set_xlabel("mean predicted probability")
    counts.set_ylabel("rows")
    return figure

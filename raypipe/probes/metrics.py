"""Probe scores, batched over many probes at once, and the statistics that say whether a score means anything.

Classification is scored by ROC-AUC, regression by Spearman correlation (the probe pipeline's selection metrics),
multiclass by macro ROC-AUC (one class against the rest, averaged; accuracy is reported beside it). All reduce to
ranks, so a whole [probes, rows] prediction matrix (multiclass: [probes, rows, classes] probabilities) is scored in
one call, and so are a thousand bootstrap resamples or label permutations of one probe.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

TaskType = Literal["classification", "regression", "multiclass"]


def metric_name(task: TaskType) -> str:
    return {"classification": "roc_auc", "regression": "spearman", "multiclass": "roc_auc_macro"}[task]


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank) along the last axis, starting at 1."""
    from scipy.stats import rankdata

    return rankdata(values, axis=-1, method="average")


def _auc_from_ranks(ranks: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """ROC-AUC via the Mann-Whitney U statistic; `positives` is 0/1 and broadcasts against `ranks`."""
    n_pos = positives.sum(axis=-1)
    n_neg = positives.shape[-1] - n_pos
    u = (ranks * positives).sum(axis=-1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=-1) / denom, np.nan)


def scores(predictions: np.ndarray, targets: np.ndarray, task: TaskType) -> np.ndarray:
    """Score every row of predictions [..., n] against targets [..., n] (broadcast): ROC-AUC or Spearman."""
    predictions = np.asarray(predictions, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if task == "classification":
        return _auc_from_ranks(_ranks(predictions), targets)
    if task == "multiclass":  # predictions [..., n, C]
        return _nanmean([_auc_from_ranks(_ranks(predictions[..., c]), (targets == c).astype(np.float64))
                         for c in range(predictions.shape[-1])])
    return _pearson_rows(_ranks(predictions), _ranks(targets))


def _nanmean(per_class: list[np.ndarray]) -> np.ndarray:
    """Mean over the classes that occur (a class absent from the targets has no ROC-AUC), NaN when none does."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack(per_class), axis=0)


def accuracies(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Multiclass accuracy of every row of probabilities [..., n, C] against class ids [..., n]."""
    return (np.argmax(probabilities, axis=-1) == np.asarray(targets)).mean(axis=-1)


def score(predictions, targets, task: TaskType) -> float:
    return float(scores(np.asarray(predictions)[None], np.asarray(targets)[None], task)[0])


def bootstrap_ci(predictions, targets, task: TaskType, resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the score over resampled rows (resamples with one class are dropped)."""
    predictions, targets = np.asarray(predictions, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    rows = np.random.default_rng(seed).integers(0, len(targets), size=(resamples, len(targets)))
    values = scores(predictions[rows], targets[rows], task)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return (math.nan, math.nan)
    tail = (1 - level) / 2 * 100
    return (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))


def _unit_rows(values: np.ndarray) -> np.ndarray:
    centered = values - values.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(centered, axis=-1, keepdims=True)
    return centered / np.where(norm > 0, norm, 1.0)


def permutation_pvalues(predictions, targets, task: TaskType, permutations: int = 1000, seed: int = 0) -> np.ndarray:
    """One-sided p-value of each probe's score [probes, n] against its scores on the same permuted targets.

    Scores are linear in the targets once the predictions are ranked, so all permutations of all probes are one
    matrix product.
    """
    predictions = np.atleast_2d(np.asarray(predictions, dtype=np.float64))
    targets = np.asarray(targets, dtype=np.float64)
    observed = scores(predictions, targets[None], task)
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(len(targets)) for _ in range(permutations)])  # [B, n]
    if task == "classification":
        null = _auc_null(_ranks(predictions), targets, order)
    elif task == "multiclass":  # the mean of each class's one-vs-rest null, over the same permutations
        null = _nanmean([_auc_null(_ranks(predictions[..., c]), (targets == c).astype(np.float64), order)
                         for c in range(predictions.shape[-1])])
    else:
        null = _unit_rows(_ranks(predictions)) @ _unit_rows(_ranks(targets))[order].T
    with np.errstate(invalid="ignore"):
        exceed = (null >= observed[:, None] - 1e-12).sum(axis=1)
    return np.where(np.isnan(observed), np.nan, (1 + exceed) / (1 + permutations))


def _auc_null(ranks: np.ndarray, positives: np.ndarray, order: np.ndarray) -> np.ndarray:
    """ROC-AUC of ranked predictions [P, n] against every permutation `order` [B, n] of 0/1 targets: [P, B]."""
    n_pos = positives.sum()
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.full((len(ranks), len(order)), np.nan)
    return (ranks @ positives[order].T - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def permutation_pvalue(predictions, targets, task: TaskType, permutations: int = 1000, seed: int = 0) -> float:
    return float(permutation_pvalues(np.asarray(predictions)[None], targets, task, permutations, seed)[0])


def classification_report(probabilities, targets, threshold: float = 0.5) -> dict[str, float]:
    """ROC-AUC, PR-AUC (average precision), accuracy and F1 of probabilities for a 0/1 target."""
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score

    probabilities, targets = np.asarray(probabilities, dtype=np.float64), np.asarray(targets).astype(int)
    one_class = len(np.unique(targets)) < 2
    predicted = (probabilities >= threshold).astype(int)
    return {
        "roc_auc": score(probabilities, targets, "classification"),
        "pr_auc": math.nan if one_class else float(average_precision_score(targets, probabilities)),
        "accuracy": float(accuracy_score(targets, predicted)),
        "f1": float(f1_score(targets, predicted, zero_division=0.0)),
    }


def regression_report(predictions, targets) -> dict[str, float]:
    predictions, targets = np.asarray(predictions, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    return {
        "spearman": score(predictions, targets, "regression"),
        "mse": float(np.mean((predictions - targets) ** 2)),
    }


def multiclass_report(probabilities, targets) -> dict[str, float]:
    """Macro ROC-AUC and accuracy of class probabilities [n, C] for class ids [n]."""
    probabilities, targets = np.asarray(probabilities, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    return {"roc_auc_macro": score(probabilities, targets, "multiclass"),
            "accuracy": float(accuracies(probabilities, targets))}


def report(predictions, targets, task: TaskType) -> dict[str, float]:
    if task == "multiclass":
        return multiclass_report(predictions, targets)
    return classification_report(predictions, targets) if task == "classification" else \
        regression_report(predictions, targets)


def significance(predictions, targets, task: TaskType, resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """The score with its bootstrap 95% interval and permutation p-value: what a reader needs to trust it."""
    low, high = bootstrap_ci(predictions, targets, task, resamples=resamples, seed=seed)
    return {
        "metric": metric_name(task),
        "value": score(predictions, targets, task),
        "ci95": [low, high],
        "p_value": permutation_pvalue(predictions, targets, task, permutations=resamples, seed=seed),
        "resamples": resamples,
    }


def calibration(probabilities, targets, bins: int = 10, resamples: int = 1000, seed: int = 0) -> dict:
    """Expected calibration error of P(target = 1) over equal-width bins, with a bootstrap 95% interval.

    ROC-AUC only ranks; ECE says whether a probe's probabilities can be read as probabilities. Each bin adds
    count/n * |mean target - mean probability| = |sum target - sum probability| / n, so every resample's ECE is a
    few `np.bincount` calls over bin indices offset by the resample, in chunks that bound the memory.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    if probabilities.ndim != 1 or probabilities.shape != targets.shape:
        raise ValueError(f"calibration needs 1-D probabilities and targets of one length, got shapes "
                         f"{probabilities.shape} and {targets.shape}")
    if bins < 1:
        raise ValueError(f"calibration needs at least one bin, got {bins}")
    if not np.isfinite(probabilities).all():
        raise ValueError("calibration: probabilities contain NaN or infinite values")
    if ((probabilities < 0) | (probabilities > 1)).any():
        raise ValueError(f"calibration: probabilities must lie in [0, 1], got values in "
                         f"[{probabilities.min()}, {probabilities.max()}]")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError(f"calibration needs 0/1 targets, got values {np.unique(targets)[:10].tolist()}")
    targets = targets.astype(np.float64)
    n = len(targets)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # The bins are [low, high), the last one closed so that 1.0 falls in it.
    index = np.searchsorted(edges[1:-1], probabilities, side="right")
    count = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=probabilities, minlength=bins)
    sum_t = np.bincount(index, weights=targets, minlength=bins)
    filled = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence, accuracy = sum_p / count, sum_t / count
    table = [{"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(count[b]),
              "confidence": float(confidence[b]) if filled[b] else None,
              "accuracy": float(accuracy[b]) if filled[b] else None} for b in range(bins)]
    result = {"metric": "ece", "value": None, "ci95": [None, None], "max_calibration_error": None, "bins": table,
              "n_bins": bins, "resamples": resamples, "rows": n}
    if n == 0:
        return result
    result["value"] = float(np.abs(sum_t - sum_p).sum() / n)
    result["max_calibration_error"] = float(np.abs(accuracy - confidence)[filled].max())
    if resamples > 0:
        rng = np.random.default_rng(seed)
        values = np.empty(resamples)
        chunk = max(1, 4_000_000 // n)  # resamples per chunk: ~4M drawn rows at a time
        for start in range(0, resamples, chunk):
            size = min(chunk, resamples - start)
            rows = rng.integers(0, n, size=(size, n))
            offset = (index[rows] + bins * np.arange(size)[:, None]).ravel()
            gap = np.bincount(offset, weights=(targets - probabilities)[rows].ravel(), minlength=size * bins)
            values[start:start + size] = np.abs(gap.reshape(size, bins)).sum(axis=1) / n
        result["ci95"] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
    return result

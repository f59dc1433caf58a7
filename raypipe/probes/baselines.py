"""What a probe must beat: the class prior (or the mean, for regression) and a probe on prompt length alone.

Each baseline is fitted on exactly the rows a probe is fitted on (the same CV folds, then all train rows), so its
CV and test scores stand beside the probe's as equals.
"""

from __future__ import annotations

import numpy as np

from raypipe.jsonsafe import json_safe
from raypipe.probes.metrics import TaskType, score, significance


def _length_model(task: TaskType):
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LinearRegression() if task == "regression" else LogisticRegression())


def _predict(model, lengths: np.ndarray, task: TaskType, n_classes: int) -> np.ndarray:
    x = lengths[:, None]
    if task == "regression":
        return model.predict(x)
    if task == "classification":
        return model.predict_proba(x)[:, 1]
    probabilities = np.zeros((len(x), n_classes))  # [n, C]; a class the fit never saw keeps probability 0
    probabilities[:, model.classes_.astype(int)] = model.predict_proba(x)
    return probabilities


def _prior(train_y, n_rows: int, task: TaskType, n_classes: int) -> np.ndarray:
    if task != "multiclass":
        return np.full(n_rows, float(np.mean(train_y)))
    frequencies = np.bincount(train_y.astype(int), minlength=n_classes) / len(train_y)
    return np.tile(frequencies, (n_rows, 1))


def fit_predict_baseline(name: str, train_x, train_y, eval_x, task: TaskType, n_classes: int = 2) -> np.ndarray:
    """Predictions of a baseline on eval_x: values, 0/1 probabilities, or [n, C] class probabilities."""
    if name == "prior" or len(np.unique(train_y)) < 2:  # one class: the length probe degenerates to the prior
        return _prior(train_y, len(eval_x), task, n_classes)
    return _predict(_length_model(task).fit(train_x[:, None], train_y), eval_x, task, n_classes)


def evaluate_baselines(train_lengths: np.ndarray, train_y: np.ndarray, evaluations: dict[str, tuple], task: TaskType,
                       block_of_row: np.ndarray | None, resamples: int = 1000, seed: int = 0) -> dict:
    """CV score (mean over folds), train score, and for each evaluated split (name -> (lengths, labels): test and the
    evaluation splits) its score with significance, for each baseline."""
    results = {}
    n_classes = int(train_y.max()) + 1 if task == "multiclass" else 2

    def fit_predict(name, x, y, eval_x):
        return fit_predict_baseline(name, x, y, eval_x, task, n_classes)

    for name in ("prior", "prompt_length"):
        entry: dict = {"description": {
            "prior": "constant prediction: the train rows' mean label (class prior for classification)",
            "prompt_length": "a probe on the prompt's token count alone (standardized, with intercept)",
        }[name]}
        if block_of_row is not None:
            folds = [score(fit_predict(name, train_lengths[block_of_row != k], train_y[block_of_row != k],
                                       train_lengths[block_of_row == k]), train_y[block_of_row == k], task)
                     for k in range(int(block_of_row.max()) + 1)]
            entry["cv"] = float(np.mean(folds))
        entry["train"] = score(fit_predict(name, train_lengths, train_y, train_lengths), train_y, task)
        for split, (lengths, labels) in evaluations.items():
            if labels is None or not len(labels):
                continue
            predictions = fit_predict(name, train_lengths, train_y, lengths)
            entry[split] = score(predictions, labels, task)
            entry[f"{split}_significance"] = significance(predictions, labels, task, resamples=resamples, seed=seed)
        results[name] = json_safe(entry)
    return results

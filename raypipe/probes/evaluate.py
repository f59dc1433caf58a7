"""Probes trained on one label, scored against another: SEP's evaluation in one command.

    raypipe evaluate --data-dir runs/sep --out-dir runs/sep-eval

The mechanism (`cross_evaluate`): fit a logistic probe per (layer, position) on the train rows of one label, then
score the test rows' predictions against a target. SEP's table (`run_evaluate`) uses it twice, against the model's
incorrectness (1 - `correct`): an accuracy probe trained on `correct` (score: 1 - P(correct)) and an SE probe trained
on `semantic_entropy_high` (score: P(high)); beside them the baselines, each a single number per row: token entropy,
negative log-probability, prompt length. Every score gets a ROC-AUC with a bootstrap 95% CI and a permutation
p-value, at SEP's positions (-1: the token before generation; answer:-2: the second-last answer token) and per layer,
plus the accuracy probe's mean confidence on correct and incorrect rows. Writes `probe_eval.json` (the seed's name)
and `roc_probe_eval.png`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from raypipe.errors import UserError
from raypipe.fs import Location
from raypipe.probes.metrics import json_safe, significance

SEP_POSITIONS = (-1, "answer:-2")


@dataclass
class EvaluateConfig:
    data_dir: str
    out_dir: str
    layers: str | None = None  # hidden-state layers (default: every stored one)
    positions: str | None = None  # default: SEP's positions the build stored, else every stored one
    alpha: float = 1.0  # L2 strength of the logistic probes (C = 1 / alpha), as in the sweep
    resamples: int = 1000
    seed: int = 42

    def __post_init__(self) -> None:
        if self.alpha <= 0:
            raise UserError(f"--alpha must be positive, got {self.alpha}")
        if self.resamples < 10:
            raise UserError(f"--resamples must be at least 10, got {self.resamples}")


@dataclass
class Split:
    features: np.ndarray  # float32 [rows, layers, positions, hidden]
    labels: dict[str, np.ndarray]  # float64 [rows] per label, NaN where a row has none
    prompt_length: np.ndarray


def load_splits(data_dir: str, labels: list[str], layers: list[int] | None, positions: list | None):
    """(train, test, stored layers, stored positions) with every named label, aligned by row."""
    from raypipe.labels.catalog import label_values
    from raypipe.probes.dataset import _prompt_lengths, resolve_layers, resolve_positions
    from raypipe.store import load_split, read_manifest

    manifest = read_manifest(data_dir)
    missing = [name for name in labels if name not in manifest["labels"]]
    if missing:
        raise UserError(f"{data_dir} has no label {', '.join(missing)} (labels: {', '.join(manifest['labels'])}); "
                        "SEP's evaluation needs a build with --answer-field and --num-samples K >= 2")
    layer_idx, position_idx = resolve_layers(manifest, layers), resolve_positions(manifest, positions)
    splits = {}
    for split in ("train", "test"):
        tensors = load_split(data_dir, split, layers=layer_idx, positions=position_idx)
        splits[split] = Split(tensors["features"].float().numpy(),
                              {name: label_values(manifest["labels"], name, tensors) for name in labels},
                              _prompt_lengths(data_dir, split, tensors))
    stored_layers = [manifest["features"]["layers"][i] for i in layer_idx]
    stored_positions = [manifest["features"]["positions"][i] for i in position_idx]
    return splits["train"], splits["test"], stored_layers, stored_positions


def fit_probes(train: np.ndarray, labels: np.ndarray, alpha: float) -> "callable":
    """Logistic probes for every (layer, position) cell of train [n, L, P, H] at once (standardised features,
    intercept); returns test [m, L, P, H] -> P(label = 1) [L * P, m] in (layer, position) order."""
    import torch

    from raypipe.probes.solvers import fit_logistic

    n, n_layers, n_positions, hidden = train.shape
    mean, std = train.mean(0, keepdims=True), train.std(0, keepdims=True) + 1e-6

    def design(x: np.ndarray) -> torch.Tensor:
        z = ((x - mean) / std).reshape(len(x), n_layers * n_positions, hidden).transpose(1, 0, 2)
        return torch.from_numpy(np.concatenate([z, np.ones((*z.shape[:2], 1))], axis=-1).astype(np.float32))

    fits = fit_logistic(design(train), torch.from_numpy(labels).float(), torch.zeros(n, dtype=torch.long),
                        torch.ones(1, 1), alpha=alpha)

    def predict(x: np.ndarray) -> np.ndarray:
        return torch.sigmoid(torch.bmm(design(x), fits.weights[:, :, -1:]).squeeze(2)).double().numpy()

    return predict


def cross_evaluate(train: Split, test: Split, train_label: str, target: np.ndarray, layers: list[int],
                   positions: list, alpha: float, resamples: int, seed: int, score_of=lambda p: p) -> dict:
    """A probe per cell trained on `train_label`, its test scores (`score_of(P(label))`) against `target` (0/1,
    NaN skipped): ROC-AUC, bootstrap CI and p-value per cell, and the best cell."""
    keep = ~np.isnan(train.labels[train_label])
    classes = np.unique(train.labels[train_label][keep])
    if len(classes) < 2:
        return {"trained_on": train_label, "skipped": f"{train_label} has a single class in the train split"}
    predict = fit_probes(train.features[keep], train.labels[train_label][keep], alpha)
    scored = ~np.isnan(target)
    probabilities = predict(test.features[scored])  # [cells, rows]
    cells = {}
    for cell, probability in enumerate(probabilities):
        layer, position = layers[cell // len(positions)], positions[cell % len(positions)]
        cells[f"pos_{position}_layer_{layer}"] = {
            "layer": layer, "position": position, "probabilities": probability,
            **significance(score_of(probability), target[scored], "classification", resamples, seed)}
    best = max(cells, key=lambda key: -np.inf if cells[key]["value"] != cells[key]["value"] else cells[key]["value"])
    return {"trained_on": train_label, "cells": cells, "best": best}


def _baseline(values: np.ndarray, target: np.ndarray, resamples: int, seed: int, description: str) -> dict:
    scored = ~np.isnan(target) & ~np.isnan(values)
    return {"description": description, "rows": int(scored.sum()),
            **significance(values[scored], target[scored], "classification", resamples, seed)}


def run_evaluate(config: EvaluateConfig) -> dict:
    from raypipe.probes.config import _int_list

    sep = ["correct", "semantic_entropy_high"]
    train, test, layers, positions = load_splits(config.data_dir, sep + ["mean_token_entropy", "mean_logprob"],
                                                 _int_list(config.layers, "--layers"),
                                                 _sep_positions(config))
    incorrect = 1.0 - test.labels["correct"]  # the target: the model got the row wrong
    if np.nansum(incorrect) in (0, np.sum(~np.isnan(incorrect))):
        raise UserError("the test split's `correct` has a single class: nothing to evaluate against")
    args = (layers, positions, config.alpha, config.resamples, config.seed)
    probes = {
        "accuracy": cross_evaluate(train, test, "correct", incorrect, *args, score_of=lambda p: 1 - p),
        "semantic_entropy": cross_evaluate(train, test, "semantic_entropy_high", incorrect, *args),
    }
    wrong = incorrect[~np.isnan(incorrect)]
    curves = {}
    for name, probe in probes.items():
        for key, cell in probe.get("cells", {}).items():
            p = cell.pop("probabilities")
            if name == "accuracy":  # SEP's mean confidence (P(correct)) on correct vs incorrect rows
                cell["mean_confidence"] = {"correct": float(p[wrong == 0].mean()),
                                           "incorrect": float(p[wrong == 1].mean())}
            if key == probe["best"]:
                curves[f"{name} probe (layer {cell['layer']}, {cell['position']})"] = 1 - p if name == "accuracy" else p
    from raypipe.probes.baselines import fit_predict_baseline

    train_wrong = 1.0 - train.labels["correct"]
    usable = ~np.isnan(train_wrong)
    baselines = {
        "token_entropy": _baseline(test.labels["mean_token_entropy"], incorrect, config.resamples, config.seed,
                                   "mean top-k token entropy of the samples (higher: more likely wrong)"),
        "log_prob": _baseline(-test.labels["mean_logprob"], incorrect, config.resamples, config.seed,
                              "negative mean log-probability of the sampled tokens"),
        "prompt_length": _baseline(
            fit_predict_baseline("prompt_length", train.prompt_length[usable], train_wrong[usable],
                                 test.prompt_length, "classification"),
            incorrect, config.resamples, config.seed, "a logistic fit on the prompt's token count alone"),
    }
    evaluation = {
        "target": "incorrect: 1 - correct, on the test split", "data_dir": config.data_dir,
        "rows": {"train": int(np.sum(~np.isnan(train.labels["correct"]))), "test": int(np.sum(~np.isnan(incorrect))),
                 "test_incorrect": int(np.nansum(incorrect))},
        "layers": layers, "positions": positions, "probes": probes, "baselines": baselines,
        "table": _table(probes, baselines),
    }
    location = Location(config.out_dir)
    location.write_atomic("probe_eval.json", (json.dumps(json_safe(evaluation), indent=1) + "\n").encode())
    _roc_figure(location, test, incorrect, curves)
    return evaluation


def _sep_positions(config: EvaluateConfig) -> list | None:
    from raypipe.probes.config import _int_list
    from raypipe.store import read_manifest

    if config.positions is not None:
        return _int_list(config.positions, "--positions", allow_markers=True)
    stored = read_manifest(config.data_dir)["features"]["positions"]
    return [p for p in SEP_POSITIONS if p in stored] or None


def _table(probes: dict, baselines: dict) -> list[dict]:
    """One row per score: SEP's table, every probe cell and every baseline."""
    rows = []
    for name, probe in probes.items():
        for cell in probe.get("cells", {}).values():
            rows.append({"score": f"{name} probe", "layer": cell["layer"], "position": cell["position"],
                         "roc_auc": cell["value"], "ci95": cell["ci95"], "p_value": cell["p_value"]})
    for name, baseline in baselines.items():
        rows.append({"score": f"{name} baseline", "layer": None, "position": None, "roc_auc": baseline["value"],
                     "ci95": baseline["ci95"], "p_value": baseline["p_value"]})
    return rows


def _roc_figure(location, test: Split, incorrect: np.ndarray, curves: dict) -> None:
    from raypipe.probes import plots

    scored = ~np.isnan(incorrect)
    curves["token entropy"] = np.nan_to_num(test.labels["mean_token_entropy"][scored])
    curves["-log-prob"] = np.nan_to_num(-test.labels["mean_logprob"][scored])
    plots.roc_curves(location, "roc_probe_eval.png", incorrect[scored], curves,
                     "predicting the model's incorrectness (test)")

"""Probes trained on one label, scored against another: SEP's evaluation in one command.

    raypipe evaluate --data-dir runs/sep --out-dir runs/sep-eval

SEP's table: two logistic probes per (layer, position), scored on the test split against the model's
incorrectness (1 - `correct`): an accuracy probe trained on `correct` (score: 1 - P(correct)) and an SE probe trained
on `semantic_entropy_high` (score: P(high)); beside them the baselines, each a single number per row: token entropy,
negative log-probability, prompt length. Every score gets a ROC-AUC with a bootstrap 95% CI and a permutation
p-value, at SEP's positions (-1: the token before generation; answer:-2: the second-last answer token) and per layer,
plus the accuracy probe's mean confidence on correct and incorrect rows. As in the sweep, the cells run as blocks
(`evaluate_block`, one layer and every position by default) where the cluster's GPUs are, each reading its own
slices; the driver reads labels only. Writes `probe_eval.json` (the seed's name, with where each block ran) and
`roc_probe_eval.png`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raypipe.errors import UserError
from raypipe.fs import Location
from raypipe.output import Build
from raypipe.probes import plots, saved
from raypipe.probes.baselines import fit_predict_baseline
from raypipe.probes.blocks import plan_blocks, run_blocks
from raypipe.probes.config import EvaluateConfig
from raypipe.probes.dataset import prompt_lengths, resolve_layers, resolve_positions, split_labels
from raypipe.probes.metrics import calibration, significance

SEP_POSITIONS = (-1, "answer:-2")


@dataclass
class Split:
    labels: dict[str, np.ndarray]  # float64 [rows] per label, NaN where a row has none
    prompt_length: np.ndarray


@dataclass
class EvaluateWork:
    """What every block of the evaluation needs (no features): the labels, which rows each probe uses, the cells."""

    data_dir: str
    layer_index: list[int]  # indices into the stored layer and position axes
    position_index: list[int]
    train: Split
    targets: dict[str, np.ndarray]  # per scored split (test, evaluation splits): its incorrectness, NaN if unknown
    config: EvaluateConfig


PROBES = {"accuracy": "correct", "semantic_entropy": "semantic_entropy_high"}  # probe -> the label it trains on


def load_splits(build, labels: list[str], layers: list[int] | None, positions: list | None):
    """({split: Split}, layer indices, position indices): the named labels and prompt lengths of every split (train,
    test and the evaluation splits), no features."""

    missing = [name for name in labels if name not in build.labels]
    if missing:
        raise UserError(f"{build.out_dir} has no label {', '.join(missing)} (labels: "
                        f"{', '.join(build.labels)}); SEP's evaluation needs a build with --answer-field and "
                        "--num-samples K >= 2")
    splits = {}
    for split in build.splits():
        values, tensors = split_labels(build, split, labels)
        splits[split] = Split(values, prompt_lengths(build, split, tensors))
    return splits, resolve_layers(build.manifest, layers), resolve_positions(build.manifest, positions)


def fit_probes(train, labels, alpha: float, device: str = "cpu") -> tuple["callable", dict]:
    """Logistic probes for every (layer, position) cell of train [n, L, P, H] at once (standardised features,
    intercept); returns test [m, L, P, H] -> P(label = 1) [L * P, m] in (layer, position) order, and the probes as
    arrays in that order: weights [L * P, H + 1] (the intercept last) and the scaling mean, std [L * P, H]."""
    import torch

    from raypipe.probes.solvers import fit_logistic

    train = torch.as_tensor(train, dtype=torch.float32, device=device)
    n, n_layers, n_positions, hidden = train.shape
    mean, std = train.mean(0, keepdim=True), train.std(0, correction=0, keepdim=True) + 1e-6

    def design(x) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32, device=device)
        z = ((x - mean) / std).reshape(len(x), n_layers * n_positions, hidden).transpose(0, 1)
        return torch.cat([z, torch.ones(*z.shape[:2], 1, device=device)], dim=-1)

    fits = fit_logistic(design(train), torch.as_tensor(labels, dtype=torch.float32, device=device),
                        torch.zeros(n, dtype=torch.long, device=device), torch.ones(1, 1, device=device), alpha=alpha)

    def predict(x) -> np.ndarray:
        return torch.sigmoid(torch.bmm(design(x), fits.weights[:, :, -1:]).squeeze(2)).double().cpu().numpy()

    probes = {"weights": fits.weights[:, :, -1].cpu().numpy(),
              "mean": mean.reshape(n_layers * n_positions, hidden).cpu().numpy(),
              "std": std.reshape(n_layers * n_positions, hidden).cpu().numpy()}
    return predict, probes


def evaluate_block(work: EvaluateWork, block, device: str) -> dict:
    """Read this block's layers (every position) of every split, fit both probes per cell on train, score them on
    each scored split against its incorrectness."""

    build = Build(work.data_dir)
    layers = [work.layer_index[i] for i in block.layers]
    train = build.features("train", layers, work.position_index)
    scored = {split: build.features(split, layers, work.position_index)[~np.isnan(target)]
              for split, target in work.targets.items()}
    block_mb = (train.numel() + sum(x.numel() for x in scored.values())) * 4 / 2**20
    n_positions = len(work.position_index)
    config = work.config
    probes = {}
    for name, label in PROBES.items():
        values = work.train.labels[label]
        keep = ~np.isnan(values)
        if len(np.unique(values[keep])) < 2:
            probes[name] = {"skipped": f"{label} has a single class in the train split"}
            continue
        predict, fitted = fit_probes(train[keep], values[keep], config.alpha, device)
        score_of = (lambda p: 1 - p) if name == "accuracy" else (lambda p: p)
        cells: dict = {}
        for cell in range(len(fitted["weights"])):  # the probe itself, to be saved beside the scores
            key = (block.layers[cell // n_positions], cell % n_positions)
            cells[key] = {"probe": {part: array[cell].astype(np.float32) for part, array in fitted.items()}}
        for split, features in scored.items():
            target = work.targets[split][~np.isnan(work.targets[split])]
            for cell, probability in enumerate(predict(features)):  # [cells, rows]
                key = (block.layers[cell // n_positions], cell % n_positions)
                cells.setdefault(key, {})[split] = {"probabilities": probability, **significance(
                    score_of(probability), target, "classification", config.resamples, config.seed)}
        probes[name] = cells
    return {"probes": probes, "block_mb": block_mb}


def cross_evaluate(name: str, results: list[dict], layers: list[int], positions: list) -> dict:
    """One probe's cells gathered from the blocks (keyed pos_{position}_layer_{layer}): the test split's scores, and
    each evaluation split's under `splits`; the best cell is chosen on test, as in SEP."""
    trained_on = PROBES[name]
    skipped = next((r["probes"][name]["skipped"] for r in results if "skipped" in r["probes"][name]), None)
    if skipped:
        return {"trained_on": trained_on, "skipped": skipped}
    cells = {}
    for (layer, position), by_split in sorted((key, cell) for r in results for key, cell in r["probes"][name].items()):
        others = {split: scores for split, scores in by_split.items() if split != "test"}
        cells[f"pos_{positions[position]}_layer_{layers[layer]}"] = {
            "layer": layers[layer], "position": positions[position], **by_split["test"],
            **({"splits": others} if others else {})}
    best = max(cells, key=lambda key: -np.inf if cells[key]["value"] != cells[key]["value"] else cells[key]["value"])
    return {"trained_on": trained_on, "cells": cells, "best": best}


def _baseline(values: np.ndarray, target: np.ndarray, resamples: int, seed: int, description: str) -> dict:
    scored = ~np.isnan(target) & ~np.isnan(values)
    return {"description": description, "rows": int(scored.sum()),
            **significance(values[scored], target[scored], "classification", resamples, seed)}


def run_evaluate(config: EvaluateConfig) -> dict:
    build = Build(config.data_dir)
    splits, layer_index, position_index = load_splits(
        build, list(PROBES.values()) + ["mean_token_entropy", "mean_logprob"], config.cell_layers(),
        _sep_positions(config, build))
    layers = [build.layers[i] for i in layer_index]
    positions = [build.positions[i] for i in position_index]
    targets = {split: 1.0 - data.labels["correct"] for split, data in splits.items() if split != "train"}
    if np.nansum(targets["test"]) in (0, np.sum(~np.isnan(targets["test"]))):
        raise UserError("the test split's `correct` has a single class: nothing to evaluate against")
    targets = {split: target for split, target in targets.items()  # a one-class evaluation split has no ROC-AUC
               if 0 < np.nansum(target) < np.sum(~np.isnan(target))}
    work = EvaluateWork(build.out_dir, layer_index, position_index, splits["train"], targets, config)
    results = run_blocks(evaluate_block, work, plan_blocks(len(layers), config.block_layers), build,
                         config.executor, config.device)
    fitted = {(name, layers[layer], positions[position]): cell.pop("probe") for r in results
              for name, cells in r["probes"].items() if "skipped" not in cells
              for (layer, position), cell in cells.items()}
    probes = {name: cross_evaluate(name, results, layers, positions) for name in PROBES}
    curves, reliability = {}, {}
    for name, probe in probes.items():
        for key, cell in probe.get("cells", {}).items():
            for split, scores in [("test", cell), *cell.get("splits", {}).items()]:
                p = scores.pop("probabilities")
                wrong = targets[split][~np.isnan(targets[split])]
                if name == "accuracy":  # SEP's mean confidence (P(correct)) on correct vs incorrect rows
                    scores["mean_confidence"] = {"correct": float(p[wrong == 0].mean()),
                                                 "incorrect": float(p[wrong == 1].mean())}
                score = 1 - p if name == "accuracy" else p
                # The score read as P(incorrect): is a threshold on it what it says?
                scores["calibration"] = calibration(score, wrong, resamples=config.resamples, seed=config.seed)
                if key == probe["best"] and split == "test":
                    label = f"{name} probe (layer {cell['layer']}, {cell['position']})"
                    curves[label], reliability[label] = score, scores["calibration"]
    baselines = {split: _baselines(splits, split, target, config) for split, target in targets.items()}
    evaluation = {
        "target": "incorrect: 1 - correct, on the test split (and on each evaluation split, under `splits`)",
        "data_dir": config.data_dir,
        "rows": {"train": int(np.sum(~np.isnan(splits["train"].labels["correct"]))),
                 **{split: int(np.sum(~np.isnan(target))) for split, target in targets.items()},
                 "test_incorrect": int(np.nansum(targets["test"]))},
        "layers": layers, "positions": positions, "probes": probes, "baselines": baselines["test"],
        "splits": {split: {"baselines": baselines[split], "incorrect": int(np.nansum(target))}
                   for split, target in targets.items() if split != "test"},
        "table": _table(probes, baselines), "executor": config.executor,
        "blocks": [{**r["ran"], "block_mb": r["block_mb"]} for r in results],
    }
    location = Location(config.out_dir)
    _save_probes(location, build, probes, fitted)
    location.write_json("probe_eval.json", evaluation)
    _roc_figure(location, splits["test"], targets["test"], curves)
    plots.reliability(location, "reliability_probe_eval.png", reliability,
                      "best probes' scores as P(incorrect) (test)")
    return evaluation


def _save_probes(location: Location, build, probes: dict, fitted: dict) -> None:
    """Every probe the evaluation reports, as probes/{probe}_pos_{position}_layer_{layer}.safetensors with its card
    (its cell's scores, and whether it is the best); each cell entry of probe_eval.json names its file."""

    fitted_on = saved.origin(build)
    for name, probe in probes.items():
        cells = probe.get("cells", {})
        files = saved.cell_file_names(f"probes/{name}_", [(c["position"], c["layer"]) for c in cells.values()])
        for (key, cell), file in zip(cells.items(), files):
            arrays = fitted[(name, cell["layer"], cell["position"])]
            scores = {"test": {k: v for k, v in cell.items() if k not in ("layer", "position", "splits")},
                      **cell.get("splits", {})}
            card = saved.card(fitted_on, "evaluate", PROBES[name], "classification", cell["layer"], cell["position"],
                              scores, evaluated_as="1 - P(correct) against incorrectness" if name == "accuracy"
                              else "P(semantic_entropy_high) against incorrectness", best=key == probe["best"])
            hidden = arrays["mean"].shape[0]
            saved.save_probe(location, file, saved.SavedProbe.from_fit(
                arrays["weights"], True, hidden, card, arrays["mean"], arrays["std"]))
            cell["probe"] = f"{file}.safetensors"


def _baselines(splits: dict, split: str, target: np.ndarray, config: EvaluateConfig) -> dict:
    """The baselines on one split: token entropy, negative log-prob, and a prompt-length fit on train."""

    data, train = splits[split], splits["train"]
    train_wrong = 1.0 - train.labels["correct"]
    usable = ~np.isnan(train_wrong)
    return {
        "token_entropy": _baseline(data.labels["mean_token_entropy"], target, config.resamples, config.seed,
                                   "mean top-k token entropy of the samples (higher: more likely wrong)"),
        "log_prob": _baseline(-data.labels["mean_logprob"], target, config.resamples, config.seed,
                              "negative mean log-probability of the sampled tokens"),
        "prompt_length": _baseline(
            fit_predict_baseline("prompt_length", train.prompt_length[usable], train_wrong[usable],
                                 data.prompt_length, "classification"),
            target, config.resamples, config.seed, "a logistic fit on the prompt's token count alone"),
    }


def _sep_positions(config: EvaluateConfig, build) -> list | None:
    if config.positions is not None:
        return config.cell_positions()
    return [p for p in SEP_POSITIONS if p in build.positions] or None


def _table(probes: dict, baselines: dict[str, dict]) -> list[dict]:
    """One row per score and split: SEP's table, every probe cell and every baseline."""
    rows = []
    for name, probe in probes.items():
        for cell in probe.get("cells", {}).values():
            for split, scores in [("test", cell), *cell.get("splits", {}).items()]:
                rows.append({"score": f"{name} probe", "split": split, "layer": cell["layer"],
                             "position": cell["position"], "roc_auc": scores["value"], "ci95": scores["ci95"],
                             "p_value": scores["p_value"]})
    for split, split_baselines in baselines.items():
        for name, baseline in split_baselines.items():
            rows.append({"score": f"{name} baseline", "split": split, "layer": None, "position": None,
                         "roc_auc": baseline["value"], "ci95": baseline["ci95"], "p_value": baseline["p_value"]})
    return rows


def _roc_figure(location, test: Split, incorrect: np.ndarray, curves: dict) -> None:
    scored = ~np.isnan(incorrect)
    curves["token entropy"] = np.nan_to_num(test.labels["mean_token_entropy"][scored])
    curves["-log-prob"] = np.nan_to_num(-test.labels["mean_logprob"][scored])
    plots.roc_curves(location, "roc_probe_eval.png", incorrect[scored], curves,
                     "predicting the model's incorrectness (test)")

"""The (layer x position) probe sweep: one Ridge/Logistic probe per cell, k-fold CV picks the best.

    python -m raypipe.train --sweep --data-dir runs/demo --out-dir runs/demo-sweep      (also: raypipe sweep)

Same fits, folds and outputs as the probe-pipeline seed (`performance.json`, `best_probe_predictions.json`,
`all_predictions.json`), but every probe and fold is solved together by solvers.py in batched torch, chunked to
`memory_gb`, on a GPU when there is one. Beside every score stand the baselines and a permutation p-value.
"""

from __future__ import annotations

import json
import time

import numpy as np

from raypipe.probes.config import SweepConfig
from raypipe.fs import Location
from raypipe.probes import plots
from raypipe.probes.baselines import evaluate_baselines
from raypipe.probes.dataset import ProbeData, load_probe_data
from raypipe.probes.metrics import accuracies, json_safe, metric_name, permutation_pvalues, scores, significance


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def assign_folds(labels: np.ndarray, task: str, n_folds: int, seed: int) -> np.ndarray:
    """Fold of each train row: StratifiedKFold for classification, KFold for regression (shuffled, seeded)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    classes = task in ("classification", "multiclass")
    if classes:
        smallest = int(np.bincount(labels.astype(int)).min())
        if smallest < n_folds:
            from raypipe.errors import UserError

            raise UserError(f"the rarest class has {smallest} train rows, fewer than --n-folds {n_folds}; "
                            f"lower --n-folds or use --no-k-fold")
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels.astype(int) if classes
                                                     else labels)):
        fold[held_out] = k
    return fold


def fit_design(fold: np.ndarray | None):
    """(block_of_row, include): fit f < K trains on every fold but f; the last fit trains on all rows."""
    import torch

    if fold is None:
        return None, torch.ones(1, 1)
    k = int(fold.max()) + 1
    include = torch.ones(k + 1, k)
    include[torch.arange(k), torch.arange(k)] = 0
    return torch.from_numpy(fold), include


def _chunk_size(rows: int, hidden: int, fits: int, blocks: int, memory_gb: float) -> int:
    """Probes per chunk: features (float32) plus per-block and per-fit Gram matrices and factors (float64)."""
    per_probe = rows * hidden * 4 * 3 + rows * fits * 4 * 4 + 2 * hidden * hidden * 8
    return max(1, int(memory_gb * 2**30 // per_probe))


def solve_all(config: SweepConfig, data: ProbeData, fold: np.ndarray | None, device: str) -> dict[str, np.ndarray]:
    """Fit every (position, layer) probe; predictions as arrays [positions * layers, rows], (position, layer) order."""
    import torch

    from raypipe.probes.solvers import fit_logistic, fit_multinomial, fit_ridge

    train, test = data.train, data.test
    n_layers, n_positions = len(data.layers), len(data.positions)
    cells = [(p, l) for p in range(n_positions) for l in range(n_layers)]
    block_of_row, include = fit_design(fold)
    if block_of_row is None:
        block_of_row = torch.zeros(len(train.labels), dtype=torch.long)
    block_of_row, include = block_of_row.to(device), include.to(device)
    y = torch.from_numpy(train.labels).to(device=device, dtype=torch.float32)
    n_classes = len(data.classes) if data.task == "multiclass" else 1
    rows, hidden = len(train.labels), train.features.shape[-1] + int(config.fit_intercept)
    chunk = _chunk_size(rows, hidden, include.shape[0] * n_classes, include.shape[1], config.memory_gb)
    if device == "cpu":
        # On CPU the solvers' many thin matrix products are bound by memory traffic: one probe at a time keeps its
        # features in cache (measured: 0.36 s per probe alone against 0.52 s in chunks of 8).
        chunk = 1

    def stacked(features, chunk_cells):
        x = torch.stack([features[:, l, p] for p, l in chunk_cells]).to(device=device, dtype=torch.float32)
        if config.fit_intercept:
            x = torch.cat([x, torch.ones(*x.shape[:2], 1, device=device)], dim=-1)
        return x

    outputs = {"train": [], "cv": [], "test": []}
    for start in range(0, len(cells), chunk):
        chunk_cells = cells[start:start + chunk]
        X = stacked(train.features, chunk_cells)
        if data.task == "multiclass":  # logits [c, N, C, F]: fits on the last axis, as for the other tasks
            fits = fit_multinomial(X, y, n_classes, block_of_row, include, alpha=config.alpha,
                                   max_iter=config.max_iter, tol=config.tol)
            link = lambda z: torch.softmax(z, dim=2)  # noqa: E731
        elif data.task == "classification":
            fits = fit_logistic(X, y, block_of_row, include, alpha=config.alpha, max_iter=config.max_iter,
                                tol=config.tol)
            link = torch.sigmoid
        else:
            fits = fit_ridge(X, y, block_of_row, include, alpha=config.alpha)
            link = lambda z: z  # noqa: E731
        logits = fits.train_logits  # [c, N, (C,) F]
        outputs["train"].append(link(logits[..., -1:]).squeeze(-1).cpu())
        if fold is not None:  # each row's prediction by the fit that held its fold out
            index = block_of_row.view(1, -1, *([1] * (logits.dim() - 2))).expand(*logits.shape[:-1], 1)
            outputs["cv"].append(link(logits.gather(-1, index)).squeeze(-1).cpu())
        if test is not None and len(test.labels):
            test_logits = torch.einsum("pnh,ph...f->pn...f", stacked(test.features, chunk_cells),
                                       fits.weights[..., -1:])
            outputs["test"].append(link(test_logits).squeeze(-1).cpu())
        del X, fits, logits
    return {name: torch.cat(parts).double().numpy() for name, parts in outputs.items() if parts}  # [cells, N(, C)]


def _grid(values: np.ndarray, n_positions: int, n_layers: int) -> list[list]:
    """Nested like the seed's performance.json: [position][layer]."""
    return json_safe(values.reshape(n_positions, n_layers).tolist())


def run_sweep(config: SweepConfig) -> dict:
    data = load_probe_data(config.data_dir, config.label, config.layer_list(), config.position_list(),
                           config.task_type)
    device = pick_device(config.device)
    task, metric = data.task, metric_name(data.task)
    train, test = data.train, data.test
    has_test = test is not None and len(test.labels) > 0
    fold = assign_folds(train.labels, task, config.n_folds, config.seed) if config.k_fold else None

    started = time.perf_counter()
    predictions = solve_all(config, data, fold, device)
    fit_seconds = time.perf_counter() - started

    n_positions, n_layers = len(data.positions), len(data.layers)
    train_scores = scores(predictions["train"], train.labels[None], task)
    if fold is not None:
        per_fold = np.stack([scores(predictions["cv"][:, fold == k], train.labels[None, fold == k], task)
                             for k in range(config.n_folds)], axis=1)  # [cells, folds]
        cv_scores, cv_std = per_fold.mean(1), per_fold.std(1)
        selection, selected_by = cv_scores, "cv"
    else:
        cv_scores = cv_std = np.full(len(train_scores), np.nan)
        selection, selected_by = train_scores, "train"
    test_scores = scores(predictions["test"], test.labels[None], task) if has_test else \
        np.full(len(train_scores), np.nan)
    test_pvalues = permutation_pvalues(predictions["test"], test.labels, task, config.resamples, config.seed) \
        if has_test else np.full(len(train_scores), np.nan)

    best = int(np.nanargmax(selection))
    best_pos, best_layer = divmod(best, n_layers)
    baselines = evaluate_baselines(train.prompt_length, train.labels, test.prompt_length if has_test else None,
                                   test.labels if has_test else None, task, fold, config.resamples, config.seed)
    best_summary = {
        "position": data.positions[best_pos], "position_index": best_pos,
        "layer": data.layers[best_layer], "layer_index": best_layer,
        "cv_score": cv_scores[best], "train_score": train_scores[best], "test_score": test_scores[best],
        "selected_by": selected_by,
    }
    if has_test:
        best_summary["test_significance"] = significance(predictions["test"][best], test.labels, task,
                                                         config.resamples, config.seed)
        best_summary["test_lift"] = {name: _lift(test_scores[best], b.get("test")) for name, b in baselines.items()}
    if fold is not None:
        best_summary["cv_lift"] = {name: _lift(cv_scores[best], b.get("cv")) for name, b in baselines.items()}

    if task == "multiclass":  # accuracy beside the macro ROC-AUC, at the same cells and for the best probe
        best_summary["classes"] = data.classes
        best_summary["test_accuracy"] = float(accuracies(predictions["test"][best], test.labels)) if has_test \
            else None
    performance = {
        "label": data.label, "task_type": task, "metric": metric, "alpha": config.alpha,
        "classes": data.classes,
        "regularization": {"ridge_alpha": config.alpha} if task == "regression" else {"logistic_C": 1 / config.alpha},
        "fit_intercept": config.fit_intercept, "k_fold": config.k_fold,
        "n_folds": config.n_folds if config.k_fold else None, "seed": config.seed,
        "positions": data.positions, "position_indices": list(range(n_positions)),
        "layers": data.layers, "layer_indices": list(range(n_layers)),
        "layer_performance": {
            "train": _grid(train_scores, n_positions, n_layers),
            "cv": _grid(cv_scores, n_positions, n_layers),
            "cv_std": _grid(cv_std, n_positions, n_layers),
            "test": _grid(test_scores, n_positions, n_layers),
            "test_p_value": _grid(test_pvalues, n_positions, n_layers),
            **(_accuracy_grids(predictions, data, fold) if task == "multiclass" else {}),
        },
        "best": best_summary,
        "baselines": baselines,
        "rows": {"train": len(train.labels), "test": len(test.labels) if has_test else 0},
        "dropped_unlabelled_rows": data.dropped,
        "device": device, "fit_seconds": fit_seconds, "data_dir": config.data_dir,
    }
    location = Location(config.out_dir)
    _write_json(location, "performance.json", performance)
    _write_json(location, "best_probe_predictions.json", {
        **best_summary,
        "task_type": task, "metric": metric,
        "train": {"row_id": train.row_id.tolist(), "labels": train.labels.tolist(),
                  "predictions": predictions["train"][best].tolist()},
        "cv": {"row_id": train.row_id.tolist(), "labels": train.labels.tolist(), "fold": fold.tolist(),
               "predictions": predictions["cv"][best].tolist()} if fold is not None else None,
        "test": {"row_id": test.row_id.tolist(), "labels": test.labels.tolist(),
                 "predictions": predictions["test"][best].tolist()} if has_test else None,
    })
    _write_json(location, "all_predictions.json", {
        "row_id": {"train": train.row_id.tolist(), "test": test.row_id.tolist() if has_test else []},
        "labels": {"train": train.labels.tolist(), "test": test.labels.tolist() if has_test else []},
        "fold": fold.tolist() if fold is not None else None,
        "probes": {
            f"pos_{data.positions[p]}_layer_{data.layers[l]}": {
                "position": data.positions[p], "layer": data.layers[l],
                "train": predictions["train"][cell].tolist(),
                "cv": predictions["cv"][cell].tolist() if fold is not None else None,
                "test": predictions["test"][cell].tolist() if has_test else None,
            }
            for cell, (p, l) in enumerate((p, l) for p in range(n_positions) for l in range(n_layers))
        },
    })
    _sweep_plots(location, data, performance, predictions, best, baselines, cv_scores if fold is not None
                 else train_scores)
    return performance


def _accuracy_grids(predictions: dict, data: ProbeData, fold: np.ndarray | None) -> dict[str, list]:
    """Multiclass accuracy per cell, [position][layer], for train, CV (each row by the fit that held it out) and
    test."""
    n_positions, n_layers = len(data.positions), len(data.layers)
    grids = {"train_accuracy": _grid(accuracies(predictions["train"], data.train.labels[None]), n_positions,
                                     n_layers)}
    if fold is not None:
        grids["cv_accuracy"] = _grid(accuracies(predictions["cv"], data.train.labels[None]), n_positions, n_layers)
    if "test" in predictions:
        grids["test_accuracy"] = _grid(accuracies(predictions["test"], data.test.labels[None]), n_positions,
                                       n_layers)
    return grids


def _lift(value: float, baseline: float | None) -> float | None:
    if baseline is None or np.isnan(value):
        return None
    return float(value - baseline)


def _write_json(location: Location, name: str, payload: dict) -> None:
    location.write_atomic(name, (json.dumps(json_safe(payload), indent=1) + "\n").encode())


def _sweep_plots(location: Location, data: ProbeData, performance: dict, predictions: dict, best: int,
                 baselines: dict, heat: np.ndarray) -> None:
    n_positions, n_layers = len(data.positions), len(data.layers)
    best_cell = divmod(best, n_layers)
    plots.score_heatmap(location, "cv_heatmap.png", heat.reshape(n_positions, n_layers), data.layers,
                        data.positions, performance["metric"], best_cell)
    test = data.test
    if test is None or not len(test.labels):
        return
    title = f"best probe: layer {data.layers[best_cell[1]]}, position {data.positions[best_cell[0]]} (test)"
    if data.task == "classification" and len(np.unique(test.labels)) == 2:
        from raypipe.probes.baselines import fit_predict_baseline

        length = fit_predict_baseline("prompt_length", data.train.prompt_length, data.train.labels, test.prompt_length,
                              data.task)
        plots.roc_curves(location, "roc_best_probe.png", test.labels,
                         {"probe": predictions["test"][best], "prompt-length baseline": length}, title)
    elif data.task == "regression":
        plots.prediction_scatter(location, "predictions_best_probe.png", test.labels, predictions["test"][best], title)

"""The (layer x position) probe sweep: one Ridge/Logistic probe per cell, k-fold CV picks the best.

    python -m raypipe.train --sweep --data-dir runs/demo --out-dir runs/demo-sweep      (also: raypipe sweep)

Same fits, folds and outputs as the probe-pipeline seed (`performance.json`, `best_probe_predictions.json`,
`all_predictions.json`, plots), plus the chosen cell's probe (`probe.safetensors` and its card `probe.json`, see
saved.py; every cell's with --save-all-probes) and, for a binary label, its calibration (ECE with a CI, a
reliability plot). The driver reads only labels and plans; the cells run as blocks (blocks.py: one layer
and every position by default) on the cluster's GPUs or CPUs, each reading its own slices of the shards and solving
its probes and folds together (solvers.py), then scoring them. The driver gathers, picks the best cell on train CV,
and writes the outputs, with where each block ran. A cell that cannot be fitted (non-finite features) is reported in
`performance.json` and on one console line; the other cells complete.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from raypipe.errors import UserError
from raypipe.fs import Location
from raypipe.jsonsafe import json_safe
from raypipe.output import Build
from raypipe.probes import plots, saved
from raypipe.probes.baselines import evaluate_baselines, fit_predict_baseline
from raypipe.probes.blocks import Block, plan_blocks, run_blocks
from raypipe.probes.config import SweepConfig
from raypipe.probes.dataset import ProbeData, load_probe_data
from raypipe.probes.metrics import accuracies, calibration, metric_name, permutation_pvalues, scores, significance
from raypipe.probes.saved import SavedProbe, save_probe


def assign_folds(labels: np.ndarray, task: str, n_folds: int, seed: int) -> np.ndarray:
    """Fold of each train row: StratifiedKFold for classification, KFold for regression (shuffled, seeded)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    classes = task in ("classification", "multiclass")
    if classes:
        smallest = int(np.bincount(labels.astype(int)).min())
        if smallest < n_folds:

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


def _chunk_size(rows: int, hidden: int, fits: int, memory_gb: float) -> int:
    """Probes per chunk on a GPU: features (float32 and a float64 copy) plus per-block and per-fit Gram matrices."""
    per_probe = rows * hidden * (4 * 3 + 8) + rows * fits * 4 * 4 + (fits + 6) * hidden * hidden * 8
    return max(1, int(memory_gb * 2**30 // per_probe))


def solve_cells(config: SweepConfig, task: str, n_classes: int, labels: np.ndarray, features: dict, cells: list,
                fold: np.ndarray | None, device: str) -> tuple[dict[str, np.ndarray], dict[int, str], int]:
    """Fit the probes of `cells` ((position, layer) indices into features [rows, layers, positions, hidden] of each
    split). Returns predictions per split ('train', 'cv', and every other split given) as [cells, rows(, classes)] and,
    under 'weights', each cell's fit on every train row, [cells, hidden (+1 intercept)(, classes)] (what predicts the
    other splits: a saved probe's weights); the cells that could not be fitted (index -> why; their predictions are
    NaN); and how many probes needed their Gram matrix in float64."""
    import torch

    from raypipe.probes.solvers import fit_logistic, fit_multinomial, fit_ridge

    block_of_row, include = fit_design(fold)
    if block_of_row is None:
        block_of_row = torch.zeros(len(labels), dtype=torch.long)
    block_of_row, include = block_of_row.to(device), include.to(device)
    y = torch.from_numpy(labels).to(device=device, dtype=torch.float32)
    rows, hidden = len(labels), features["train"].shape[-1] + int(config.fit_intercept)
    # On CPU the solvers' many thin matrix products are bound by memory traffic: one probe at a time keeps its
    # features in cache (measured: 0.36 s per probe alone against 0.52 s in chunks of 8).
    chunk = 1 if device == "cpu" else _chunk_size(rows, hidden, include.shape[0] * n_classes, config.memory_gb)
    others = [split for split in features if split != "train"]

    def stacked(split, chunk_cells):
        x = torch.stack([features[split][:, l, p] for p, l in chunk_cells]).to(device=device, dtype=torch.float32)
        if config.fit_intercept:
            x = torch.cat([x, torch.ones(*x.shape[:2], 1, device=device)], dim=-1)
        return x

    def unfittable(cell) -> str | None:
        p, l = cell
        for split in features:
            x = features[split][:, l, p]
            if torch.isfinite(x.sum(dtype=torch.float64)):  # one pass: finite unless an entry is not
                continue
            bad = int((~torch.isfinite(x)).any(dim=-1).sum())
            if bad:
                return f"features of {bad} {split} row(s) are not finite (NaN or infinity)"
        return None

    def solve(chunk_cells) -> dict:
        X = stacked("train", chunk_cells)
        if task == "multiclass":  # logits [c, N, C, F]: fits on the last axis, as for the other tasks
            fits = fit_multinomial(X, y, n_classes, block_of_row, include, alpha=config.alpha,
                                   max_iter=config.max_iter, tol=config.tol)
            link = lambda z: torch.softmax(z, dim=2)  # noqa: E731
        elif task == "classification":
            fits = fit_logistic(X, y, block_of_row, include, alpha=config.alpha, max_iter=config.max_iter,
                                tol=config.tol)
            link = torch.sigmoid
        else:
            fits = fit_ridge(X, y, block_of_row, include, alpha=config.alpha)
            link = lambda z: z  # noqa: E731
        logits = fits.train_logits  # [c, N, (C,) F]
        out = {"train": link(logits[..., -1:]).squeeze(-1), "weights": fits.weights[..., -1],
               "exact_gram": fits.exact_gram}
        if fold is not None:  # each row's prediction by the fit that held its fold out
            index = block_of_row.view(1, -1, *([1] * (logits.dim() - 2))).expand(*logits.shape[:-1], 1)
            out["cv"] = link(logits.gather(-1, index)).squeeze(-1)
        for split in others:
            split_logits = torch.einsum("pnh,ph...f->pn...f", stacked(split, chunk_cells), fits.weights[..., -1:])
            out[split] = link(split_logits).squeeze(-1)
        return out

    classes = (n_classes,) if task == "multiclass" else ()
    predictions = {name: np.full((len(cells), features["train" if name == "cv" else name].shape[0], *classes),
                                 np.nan) for name in ["train", *(["cv"] if fold is not None else []), *others]}
    predictions["weights"] = np.full((len(cells), hidden, *classes), np.nan)
    unfit = {i: why for i, cell in enumerate(cells) if (why := unfittable(cell)) is not None}
    fittable = [i for i in range(len(cells)) if i not in unfit]
    exact_gram = 0

    def attempt(indices: list[int]) -> list[tuple[list[int], dict | str]]:
        """Solve these cells together; on a solver error (torch.linalg's), one at a time, then give up on a cell."""
        try:
            return [(indices, solve([cells[i] for i in indices]))]
        except (RuntimeError, ValueError) as exc:
            if len(indices) > 1:
                return [part for i in indices for part in attempt([i])]
            return [(indices, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}")]

    chunks = [fittable[start:start + chunk] for start in range(0, len(fittable), chunk)]
    for done in _map_on_cores(attempt, chunks, device):
        for indices, solved in done:
            if isinstance(solved, str):
                unfit[indices[0]] = solved
                continue
            exact_gram += solved.pop("exact_gram")
            for name, values in solved.items():
                predictions[name][indices] = values.double().cpu().numpy()
    return predictions, unfit, exact_gram


def _map_on_cores(function, items: list, device: str):
    """`function` over items; on CPU, one item per core at a time, each with one torch thread.

    A probe's fits are many thin matrix products over its features, bound by memory traffic, which two threads on
    one product barely speed up; two probes side by side, one thread each, take both cores (as two 1-CPU block tasks
    do under Ray). torch's operators release the GIL, so Python threads suffice.
    """
    import torch

    cores = torch.get_num_threads()
    if device != "cpu" or cores == 1 or len(items) < 2:
        yield from map(function, items)
        return
    from concurrent.futures import ThreadPoolExecutor

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(cores) as pool:
            yield from pool.map(function, items)
    finally:
        torch.set_num_threads(cores)


@dataclass
class SweepWork:
    """What every block of a sweep needs, small enough for Ray's object store: labels and kept rows per split (no
    features), the folds, the configuration."""

    data: ProbeData
    fold: np.ndarray | None
    config: SweepConfig


def fit_block(work: SweepWork, block: Block, device: str) -> dict:
    """Read this block's features (its layers, every position) from every split, fit and score its cells."""

    data, config, fold = work.data, work.config, work.fold
    build = Build(data.data_dir)
    features = {split: data.features(build, split, list(block.layers)) for split in data.splits}
    block_mb = sum(x.numel() * x.element_size() for x in features.values()) / 2**20
    cells = [(p, i) for p in range(len(data.positions)) for i in range(len(block.layers))]
    n_classes = len(data.classes) if data.task == "multiclass" else 1
    predictions, unfit, exact_gram = solve_cells(config, data.task, n_classes, data.train.labels, features, cells,
                                                 fold, device)
    weights = predictions.pop("weights")
    del features
    task, labels = data.task, data.train.labels
    result_scores = {"train": scores(predictions["train"], labels[None], task)}
    if fold is not None:
        per_fold = np.stack([scores(predictions["cv"][:, fold == k], labels[None, fold == k], task)
                             for k in range(int(fold.max()) + 1)], axis=1)  # [cells, folds]
        result_scores["cv"], result_scores["cv_std"] = per_fold.mean(1), per_fold.std(1)
    for split in data.splits:
        if split == "train" or not len(data.splits[split].labels):
            continue
        target = data.splits[split].labels
        result_scores[split] = scores(predictions[split], target[None], task)
        result_scores[f"{split}_p_value"] = permutation_pvalues(predictions[split], target, task, config.resamples,
                                                                config.seed)
    if task == "multiclass":
        for name in predictions:
            target = labels if name in ("train", "cv") else data.splits[name].labels
            if len(target):
                result_scores[f"{name}_accuracy"] = accuracies(predictions[name], target[None])
    return {"cells": [(p, block.layers[i]) for p, i in cells], "scores": result_scores,
            "predictions": {name: values.astype(np.float32) for name, values in predictions.items()},
            "weights": weights.astype(np.float32),
            "unfit": {cells_index: why for cells_index, why in unfit.items()}, "exact_gram": exact_gram,
            "block_mb": block_mb}


def _gather(results: list[dict], n_positions: int, n_layers: int) -> tuple[dict, dict, dict, list]:
    """Blocks' results as arrays in (position, layer) cell order: scores [cells], predictions [cells, rows(, C)]
    (and the cells' weights under 'weights')."""
    n_cells = n_positions * n_layers
    gathered_scores: dict[str, np.ndarray] = {}
    gathered_predictions: dict[str, np.ndarray] = {}
    unfit: dict[int, str] = {}
    ran = []
    for result in results:
        order = np.array([p * n_layers + l for p, l in result["cells"]])
        for name, values in result["scores"].items():
            gathered_scores.setdefault(name, np.full(n_cells, np.nan))[order] = values
        for name, values in [*result["predictions"].items(), ("weights", result["weights"])]:
            target = gathered_predictions.setdefault(name, np.full((n_cells, *values.shape[1:]), np.nan,
                                                                    dtype=np.float32))
            target[order] = values
        unfit.update({int(order[i]): why for i, why in result["unfit"].items()})
        ran.append({**result["ran"], "block_mb": result["block_mb"], "exact_gram": result["exact_gram"],
                    **({"gpu_peak_mb": result["gpu_peak_mb"]} if "gpu_peak_mb" in result else {})})
    return gathered_scores, gathered_predictions, unfit, ran


def _grid(values: np.ndarray, n_positions: int, n_layers: int) -> list[list]:
    """Nested like the seed's performance.json: [position][layer]."""
    return json_safe(values.reshape(n_positions, n_layers).tolist())


def run_sweep(config: SweepConfig) -> dict:
    build = Build(config.data_dir)
    data = load_probe_data(build, config.label, config.cell_layers(), config.cell_positions(), config.task_type)
    task, metric = data.task, metric_name(data.task)
    train = data.train
    scored = [split for split in data.splits if split != "train" and len(data.splits[split].labels)]
    fold = assign_folds(train.labels, task, config.n_folds, config.seed) if config.k_fold else None
    n_positions, n_layers = len(data.positions), len(data.layers)

    started = time.perf_counter()
    blocks = plan_blocks(n_layers, config.block_layers)
    results = run_blocks(fit_block, SweepWork(data, fold, config), blocks, build, config.executor, config.device)
    fit_seconds = time.perf_counter() - started
    grid_scores, predictions, unfit, ran = _gather(results, n_positions, n_layers)
    weights = predictions.pop("weights")
    missing = np.full(n_positions * n_layers, np.nan)
    for split in ("test", "cv", "cv_std", "test_p_value"):  # the seed's keys, present even when empty
        grid_scores.setdefault(split, missing)

    selection, selected_by = (grid_scores["cv"], "cv") if fold is not None else (grid_scores["train"], "train")
    if np.isnan(selection).all():

        raise UserError(f"no cell of the sweep could be fitted: {next(iter(unfit.values()), 'no score')}")
    best = int(np.nanargmax(selection))  # chosen on train CV: the test and evaluation splits only report
    best_pos, best_layer = divmod(best, n_layers)
    baselines = evaluate_baselines(train.prompt_length, train.labels,
                                   {split: (data.splits[split].prompt_length, data.splits[split].labels)
                                    for split in scored}, task, fold, config.resamples, config.seed)
    best_summary = {
        "position": data.positions[best_pos], "position_index": best_pos,
        "layer": data.layers[best_layer], "layer_index": best_layer,
        "cv_score": grid_scores["cv"][best], "train_score": grid_scores["train"][best],
        "test_score": grid_scores["test"][best], "selected_by": selected_by,
    }
    for split in scored:  # each split's score of the chosen probe, with its CI, p-value and lift over baselines
        labels, chosen = data.splits[split].labels, predictions[split][best]
        best_summary[f"{split}_score"] = grid_scores[split][best]
        best_summary[f"{split}_significance"] = significance(chosen, labels, task, config.resamples, config.seed)
        best_summary[f"{split}_lift"] = {name: _lift(grid_scores[split][best], b.get(split))
                                        for name, b in baselines.items()}
        if task == "multiclass":  # accuracy beside the macro ROC-AUC
            best_summary[f"{split}_accuracy"] = float(accuracies(chosen, labels))
        if task == "classification":  # a monitor's threshold is read off its probabilities: are they calibrated?
            best_summary[f"{split}_calibration"] = calibration(chosen, labels, resamples=config.resamples,
                                                               seed=config.seed)
    if fold is not None:
        best_summary["cv_lift"] = {name: _lift(grid_scores["cv"][best], b.get("cv")) for name, b in baselines.items()}
    if task == "multiclass":
        best_summary["classes"] = data.classes
        best_summary.setdefault("test_accuracy", None)
    unfitted = {f"pos_{data.positions[cell // n_layers]}_layer_{data.layers[cell % n_layers]}": why
                for cell, why in sorted(unfit.items())}
    performance = {
        "label": data.label, "task_type": task, "metric": metric, "alpha": config.alpha,
        "classes": data.classes,
        "regularization": {"ridge_alpha": config.alpha} if task == "regression" else {"logistic_C": 1 / config.alpha},
        "fit_intercept": config.fit_intercept, "k_fold": config.k_fold,
        "n_folds": config.n_folds if config.k_fold else None, "seed": config.seed,
        "positions": data.positions, "position_indices": list(range(n_positions)),
        "layers": data.layers, "layer_indices": list(range(n_layers)),
        "splits": ["train", *scored],
        "layer_performance": {name: _grid(values, n_positions, n_layers) for name, values in grid_scores.items()},
        "best": best_summary,
        "baselines": baselines,
        "unfitted": unfitted,
        "rows": {"test": 0} | {split: len(data.splits[split].labels) for split in data.splits},
        "dropped_unlabelled_rows": data.dropped,
        "executor": config.executor, "blocks": ran, "fit_seconds": fit_seconds, "data_dir": config.data_dir,
    }
    if unfitted:
        print(f"raypipe: {len(unfitted)} of {n_positions * n_layers} cells could not be fitted (performance.json "
              f"'unfitted'): " + "; ".join(f"{cell}: {why}" for cell, why in list(unfitted.items())[:3])
              + ("; ..." if len(unfitted) > 3 else ""), flush=True)
    location = Location(config.out_dir)
    location.write_json("performance.json", performance)
    location.write_json("best_probe_predictions.json", {
        **best_summary,
        "task_type": task, "metric": metric,
        "train": {"row_id": train.row_id.tolist(), "labels": train.labels.tolist(),
                  "predictions": predictions["train"][best].tolist()},
        "cv": {"row_id": train.row_id.tolist(), "labels": train.labels.tolist(), "fold": fold.tolist(),
               "predictions": predictions["cv"][best].tolist()} if fold is not None else None,
        "test": None,
        **{split: {"row_id": data.splits[split].row_id.tolist(), "labels": data.splits[split].labels.tolist(),
                   "predictions": predictions[split][best].tolist()} for split in scored},
    })
    _write_all_predictions(location, data, predictions, fold, scored)
    _sweep_plots(location, data, performance, predictions, best, selection)
    _save_probes(location, build, config, data, weights, best, best_summary, unfit)
    return performance


def _save_probes(location: Location, build, config: SweepConfig, data: ProbeData, weights: np.ndarray, best: int,
                 best_summary: dict, unfit: dict) -> None:
    """The chosen cell's probe as probe.safetensors + probe.json; with --save-all-probes every fitted cell's too, as
    probes/pos_{position}_layer_{layer}.*, each card with its cell's scores."""
    n_layers, hidden, fitted_on = len(data.layers), build.hidden_size, saved.origin(build)

    def save(name: str, cell: int, scores: dict) -> None:
        position, layer = data.positions[cell // n_layers], data.layers[cell % n_layers]
        probe_card = saved.card(fitted_on, "sweep", data.label, data.task, layer, position, scores, data.classes,
                                fit={"alpha": config.alpha, "fit_intercept": config.fit_intercept,
                                     "standardized": False, "seed": config.seed})
        save_probe(location, name, SavedProbe.from_fit(weights[cell], config.fit_intercept, hidden, probe_card))

    save("probe", best, {key: value for key, value in best_summary.items() if key not in ("position", "layer")})
    if config.save_all_probes:
        files = saved.cell_file_names("probes/", [(data.positions[cell // n_layers], data.layers[cell % n_layers])
                                                  for cell in range(len(weights))])
        for cell, file in enumerate(files):
            if cell not in unfit:
                save(file, cell, {"chosen": cell == best})


def _write_all_predictions(location: Location, data: ProbeData, predictions: dict, fold, scored: list) -> None:
    """all_predictions.json, written cell by cell: never the whole document in memory at once."""
    n_layers = len(data.layers)
    splits = ["train", *scored]

    def chunks():
        head = {"row_id": {"test": []} | {split: data.splits[split].row_id.tolist() for split in splits},
                "labels": {"test": []} | {split: data.splits[split].labels.tolist() for split in splits},
                "fold": fold.tolist() if fold is not None else None}
        yield (json.dumps(json_safe(head), indent=1)[:-2] + ',\n "probes": {').encode()
        for cell in range(len(data.positions) * n_layers):
            p, l = divmod(cell, n_layers)
            entry = {"position": data.positions[p], "layer": data.layers[l],
                     "train": predictions["train"][cell].tolist(),
                     "cv": predictions["cv"][cell].tolist() if fold is not None else None, "test": None,
                     **{split: predictions[split][cell].tolist() for split in scored}}
            key = json.dumps(f"pos_{data.positions[p]}_layer_{data.layers[l]}")
            yield (("\n  " if cell == 0 else ",\n  ") + f"{key}: {json.dumps(json_safe(entry))}").encode()
        yield b"\n }\n}\n"

    location.write_atomic_chunks("all_predictions.json", chunks())


def _lift(value: float, baseline: float | None) -> float | None:
    if baseline is None or np.isnan(value):
        return None
    return float(value - baseline)


def _sweep_plots(location: Location, data: ProbeData, performance: dict, predictions: dict, best: int,
                 heat: np.ndarray) -> None:
    n_positions, n_layers = len(data.positions), len(data.layers)
    best_cell = divmod(best, n_layers)
    plots.score_heatmap(location, "cv_heatmap.png", heat.reshape(n_positions, n_layers), data.layers,
                        data.positions, performance["metric"], best_cell)
    test = data.test
    if test is None or not len(test.labels):
        return
    title = f"best probe: layer {data.layers[best_cell[1]]}, position {data.positions[best_cell[0]]} (test)"
    if data.task == "classification" and len(np.unique(test.labels)) == 2:

        length = fit_predict_baseline("prompt_length", data.train.prompt_length, data.train.labels,
                                      test.prompt_length, data.task)
        plots.roc_curves(location, "roc_best_probe.png", test.labels,
                         {"probe": predictions["test"][best], "prompt-length baseline": length}, title)
        plots.reliability(location, "reliability_best_probe.png",
                          {"probe": performance["best"]["test_calibration"]}, title)
    elif data.task == "regression":
        plots.prediction_scatter(location, "predictions_best_probe.png", test.labels, predictions["test"][best],
                                 title)

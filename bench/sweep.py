"""Sweep benchmark: raypipe's batched (layer x position) probe sweep against a scikit-learn loop, in one run.

    .venv/bin/python bench/sweep.py [--task classification|regression] [--rows 2000] [--layers 30]
                                    [--positions 3] [--hidden 576] [--folds 5] [--scales isotropic|anisotropic]

Same synthetic features (a label-bearing direction strongest at one cell, weaker around it), same stratified
folds, same alpha, same objective (fit_intercept=False; Logistic C = 1/alpha, Ridge alpha):
  sklearn : for every (position, layer): one fit per fold + one on all train rows, predictions, scores
  raypipe : raypipe.probes.sweep.solve_all (every probe and fold batched in torch) + the same scoring
Prints both times, the speed-up (target >= 10x), both best cells (must agree) and the largest |score difference|
over all cells for CV and test scores (target <= 0.01).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def synthetic(rows: int, layers: int, positions: int, hidden: int, task: str, seed: int, scales: str = "isotropic"):
    """features [rows, layers, positions, hidden]; the signal's strength peaks at (2/3 depth, last position).

    scales='anisotropic' multiplies each hidden dimension by exp(N(0, 1)), as real residual streams have
    dimensions of very different scale; that is what makes unscaled probes hard for first-order solvers.
    """
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=rows)
    direction = np.random.default_rng(99).normal(size=hidden)
    direction /= np.linalg.norm(direction)
    peak = (2 * layers // 3, positions - 1)
    features = rng.normal(size=(rows, layers, positions, hidden)).astype(np.float32)
    for layer in range(layers):
        for position in range(positions):
            strength = 1.5 * np.exp(-abs(layer - peak[0]) / 4 - abs(position - peak[1]))
            features[:, layer, position] += (strength * latent[:, None] * direction).astype(np.float32)
    if scales == "anisotropic":
        features *= np.exp(np.random.default_rng(7).normal(size=hidden)).astype(np.float32)
    noisy = latent + 0.7 * rng.normal(size=rows)
    labels = (noisy > 0.3).astype(np.float64) if task == "classification" else noisy
    return features, labels


def sklearn_loop(train_x, train_y, test_x, test_y, fold, task, alpha):
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import roc_auc_score

    def new_model():
        if task == "classification":
            return LogisticRegression(C=1 / alpha, fit_intercept=False, max_iter=1000)
        return Ridge(alpha=alpha, fit_intercept=False)

    def predict(model, x):
        return model.predict_proba(x)[:, 1] if task == "classification" else model.predict(x)

    def metric(y, p):
        return roc_auc_score(y, p) if task == "classification" else spearmanr(y, p).statistic

    n_layers, n_positions = train_x.shape[1], train_x.shape[2]
    cv, test = np.zeros(n_positions * n_layers), np.zeros(n_positions * n_layers)
    for cell, (p, l) in enumerate((p, l) for p in range(n_positions) for l in range(n_layers)):
        x = train_x[:, l, p]
        fold_scores = []
        for k in range(int(fold.max()) + 1):
            model = new_model().fit(x[fold != k], train_y[fold != k])
            fold_scores.append(metric(train_y[fold == k], predict(model, x[fold == k])))
        cv[cell] = np.mean(fold_scores)
        test[cell] = metric(test_y, predict(new_model().fit(x, train_y), test_x[:, l, p]))
    return cv, test


def raypipe_sweep(train_x, train_y, test_x, test_y, fold, task, alpha, layers, positions):
    import torch

    from raypipe.probes.config import SweepConfig
    from raypipe.probes.dataset import ProbeData, ProbeSplit
    from raypipe.probes.metrics import scores
    from raypipe.probes.sweep import solve_all

    def split(x, y):
        return ProbeSplit(features=torch.from_numpy(x), labels=y, row_id=np.arange(len(y)),
                          prompt_length=np.zeros(len(y)))

    data = ProbeData(label="bench", task=task, layers=list(range(layers)), positions=list(range(-positions, 0)),
                     splits={"train": split(train_x, train_y), "test": split(test_x, test_y)})
    config = SweepConfig(data_dir="-", out_dir="-", alpha=alpha, n_folds=int(fold.max()) + 1)
    predictions = solve_all(config, data, fold, "cpu")
    cv = np.stack([scores(predictions["cv"][:, fold == k], train_y[None, fold == k], task)
                   for k in range(int(fold.max()) + 1)], axis=1).mean(1)
    return cv, scores(predictions["test"], test_y[None], task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["classification", "regression"], default="classification")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--test-rows", type=int, default=500)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--positions", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--scales", choices=["isotropic", "anisotropic"], default="isotropic")
    args = parser.parse_args()

    from raypipe.probes.sweep import assign_folds

    train_x, train_y = synthetic(args.rows, args.layers, args.positions, args.hidden, args.task, 0, args.scales)
    test_x, test_y = synthetic(args.test_rows, args.layers, args.positions, args.hidden, args.task, 1, args.scales)
    fold = assign_folds(train_y, args.task, args.folds, seed=42)
    fits = args.layers * args.positions * (args.folds + 1)
    print(f"{args.task}, {args.scales} features: N={args.rows} train / {args.test_rows} test, {args.layers} layers x {args.positions} "
          f"positions, H={args.hidden}, {args.folds} folds: {fits} fits per side", flush=True)

    started = time.perf_counter()
    ours_cv, ours_test = raypipe_sweep(train_x, train_y, test_x, test_y, fold, args.task, args.alpha, args.layers,
                                       args.positions)
    ours_seconds = time.perf_counter() - started
    print(f"raypipe sweep : {ours_seconds:8.2f} s", flush=True)

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence warnings: reported through the score comparison
        sk_cv, sk_test = sklearn_loop(train_x, train_y, test_x, test_y, fold, args.task, args.alpha)
    sk_seconds = time.perf_counter() - started
    print(f"sklearn loop  : {sk_seconds:8.2f} s", flush=True)

    def cell(index):
        p, l = divmod(int(index), args.layers)
        return f"(layer {l}, position {p - args.positions})"

    print(f"speed-up      : {sk_seconds / ours_seconds:8.1f}x   (target >= 10x)")
    print(f"best cell     : raypipe {cell(np.argmax(ours_cv))}, sklearn {cell(np.argmax(sk_cv))}   "
          f"same: {np.argmax(ours_cv) == np.argmax(sk_cv)}")
    print(f"max |diff|    : CV {np.max(np.abs(ours_cv - sk_cv)):.2e}, test {np.max(np.abs(ours_test - sk_test)):.2e}"
          f"   (target <= 0.01); best CV score {ours_cv.max():.4f}")


if __name__ == "__main__":
    main()

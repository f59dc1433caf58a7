"""Sweep benchmark: raypipe's batched (layer x position) probe fits against a scikit-learn loop, in one run.

    .venv/bin/python bench/sweep.py [--task classification|regression] [--rows 2000] [--layers 30]
                                    [--positions 3] [--hidden 576] [--folds 5] [--scales isotropic|anisotropic|massive]
                                    [--device cpu|cuda] [--profile]

Same synthetic features (a label-bearing direction strongest at one cell, weaker around it), same stratified
folds, same alpha, same objective (fit_intercept=False; Logistic C = 1/alpha, Ridge alpha):
  sklearn : for every (position, layer): one fit per fold + one on all train rows, predictions, scores
  raypipe : raypipe.probes.sweep.solve_cells (what every block of `raypipe sweep` runs) + the same scoring
Prints both times, the speed-up (target >= 10x on CPU, >= 50x on a GPU), both best cells (must agree), the largest
|score difference| over all cells for CV and test scores (target <= 0.01), and for ridge the share of this machine's
float32 matmul rate (measured in the same run) that raypipe's counted flops reach (target >= 0.5). `--profile`
prints where raypipe's time goes (torch.profiler, by operator).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def synthetic(rows: int, layers: int, positions: int, hidden: int, task: str, seed: int, scales: str = "isotropic"):
    """features [rows, layers, positions, hidden]; the signal's strength peaks at (2/3 depth, last position).

    scales='anisotropic' multiplies each hidden dimension by exp(N(0, 1)), as real residual streams have dimensions
    of very different scale; 'massive' adds, on top, four dimensions a thousand times larger than the rest and nearly
    constant across rows (the "massive activations" of late layers): a float32 Gram matrix of such features is not
    positive definite.
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
    if scales in ("anisotropic", "massive"):
        features *= np.exp(np.random.default_rng(7).normal(size=hidden)).astype(np.float32)
    if scales == "massive":
        massive = np.random.default_rng(8).choice(hidden, 4, replace=False)
        features[..., massive] = (3000.0 * (1 + 0.001 * features[..., massive])).astype(np.float32)
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


def raypipe_sweep(train_x, train_y, test_x, test_y, fold, task, alpha, device):
    import torch

    from raypipe.probes.config import SweepConfig
    from raypipe.probes.metrics import scores
    from raypipe.probes.sweep import solve_cells

    config = SweepConfig(data_dir="-", out_dir="-", alpha=alpha, n_folds=int(fold.max()) + 1, executor="local")
    features = {"train": torch.from_numpy(train_x), "test": torch.from_numpy(test_x)}
    cells = [(p, l) for p in range(train_x.shape[2]) for l in range(train_x.shape[1])]
    predictions, unfit, exact = solve_cells(config, task, 1, train_y, features, cells, fold, device)
    cv = np.stack([scores(predictions["cv"][:, fold == k], train_y[None, fold == k], task)
                   for k in range(int(fold.max()) + 1)], axis=1).mean(1)
    return cv, scores(predictions["test"], test_y[None], task), unfit, exact


def matmul_rate(device: str, n: int = 2048, seconds: float = 3.0) -> float:
    """float32 matmul FLOP/s of this machine, now (the roofline of the ridge fits)."""
    import torch

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * count / (time.perf_counter() - start)


def ridge_flops(rows: int, hidden: int, folds: int, probes: int, refinement_steps: int = 2) -> float:
    """The flops the ridge fits do: per-block Gram matrices (2 N H^2 for all blocks together), a Cholesky per fit
    (H^3 / 3), the float64 right-hand sides and refinement residuals (4 N H F per step), the triangular solves."""
    fits = folds + 1
    per_probe = (2 * rows * hidden**2 + fits * hidden**3 / 3 + 2 * rows * hidden * fits
                 + refinement_steps * (4 * rows * hidden * fits + 2 * fits * hidden**2))
    return probes * per_probe


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
    parser.add_argument("--scales", choices=["isotropic", "anisotropic", "massive"], default="isotropic")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--profile", action="store_true", help="where raypipe's time goes, by operator")
    args = parser.parse_args()

    from raypipe.probes.sweep import assign_folds

    train_x, train_y = synthetic(args.rows, args.layers, args.positions, args.hidden, args.task, 0, args.scales)
    test_x, test_y = synthetic(args.test_rows, args.layers, args.positions, args.hidden, args.task, 1, args.scales)
    fold = assign_folds(train_y, args.task, args.folds, seed=42)
    probes = args.layers * args.positions
    print(f"{args.task}, {args.scales} features: N={args.rows} train / {args.test_rows} test, {args.layers} layers x "
          f"{args.positions} positions, H={args.hidden}, {args.folds} folds: {probes * (args.folds + 1)} fits per side, "
          f"raypipe on {args.device}", flush=True)
    rate = matmul_rate(args.device)
    print(f"float32 matmul: {rate / 1e9:8.1f} GFLOP/s (measured now)", flush=True)

    def ours():
        return raypipe_sweep(train_x, train_y, test_x, test_y, fold, args.task, args.alpha, args.device)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
        with profile(activities=activities) as profiler:
            ours()
        print(profiler.key_averages().table(sort_by="self_cpu_time_total" if args.device == "cpu" else
                                            "self_cuda_time_total", row_limit=15))
    ours()  # warm-up (first-call overheads of torch's kernels)
    started = time.perf_counter()
    ours_cv, ours_test, unfit, exact = ours()
    ours_seconds = time.perf_counter() - started
    print(f"raypipe sweep : {ours_seconds:8.2f} s   ({len(unfit)} cells unfitted, {exact} Gram matrices formed again "
          f"in float64)", flush=True)

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence warnings: reported through the score comparison
        sk_cv, sk_test = sklearn_loop(train_x, train_y, test_x, test_y, fold, args.task, args.alpha)
    sk_seconds = time.perf_counter() - started
    print(f"sklearn loop  : {sk_seconds:8.2f} s", flush=True)

    def cell(index):
        p, l = divmod(int(index), args.layers)
        return f"(layer {l}, position {p - args.positions})"

    target = 50 if args.device == "cuda" else 10
    print(f"speed-up      : {sk_seconds / ours_seconds:8.1f}x   (target >= {target}x)")
    print(f"best cell     : raypipe {cell(np.argmax(ours_cv))}, sklearn {cell(np.argmax(sk_cv))}   "
          f"same: {np.argmax(ours_cv) == np.argmax(sk_cv)}")
    print(f"max |diff|    : CV {np.max(np.abs(ours_cv - sk_cv)):.2e}, test {np.max(np.abs(ours_test - sk_test)):.2e}"
          f"   (target <= 0.01); best CV score {ours_cv.max():.4f}")
    if args.task == "regression":
        flops = ridge_flops(args.rows, args.hidden, args.folds, probes)
        print(f"roofline      : {flops / 1e9:.0f} GFLOP counted, {flops / ours_seconds / 1e9:.1f} GFLOP/s = "
              f"{flops / ours_seconds / rate:.2f} of the float32 matmul rate   (target >= 0.5)")


if __name__ == "__main__":
    main()

"""Probe solvers, scores and the sweep on data with a known answer (no model): they must find the planted cell."""

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

from raypipe.errors import UserError
from raypipe.probes import metrics
from raypipe.probes.config import SweepConfig
from raypipe.probes.solvers import fit_logistic, fit_multinomial, fit_ridge
from raypipe.probes.sweep import assign_folds, fit_design, run_sweep
from tests.synthetic import planted_features, write_planted_build


def _problem(rows=300, hidden=24, seed=0, task="classification"):
    features, labels = planted_features(rows, 3, 1, hidden, planted=(1, 0), seed=seed,
                                        regression=task == "regression")
    scale = np.exp(np.random.default_rng(5).normal(size=hidden)).astype(np.float32)  # unequal feature scales
    X = torch.from_numpy(np.ascontiguousarray((features[:, :, 0] * scale).transpose(1, 0, 2)))
    fold = assign_folds(labels, task, 4, seed=3)
    return X, labels, fold


def _sklearn_weights(x, y, task, alpha):
    from sklearn.linear_model import LogisticRegression, Ridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task == "classification":
            return LogisticRegression(C=1 / alpha, fit_intercept=False, max_iter=20000, tol=1e-10).fit(x, y).coef_[0]
        return Ridge(alpha=alpha, fit_intercept=False).fit(x, y).coef_


@pytest.mark.parametrize("float64_fallback", [False, True], ids=["float32", "float64-fallback"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_batched_solvers_reach_sklearns_optimum_for_every_probe_and_fold(task, float64_fallback, monkeypatch):
    """Also with every float32 factorisation reported failed (as on a real cell whose float32 system is not positive
    definite): each probe is then solved in float64 and counted once."""
    if float64_fallback:
        factor = torch.linalg.cholesky_ex

        def float32_fails(matrix, *args, **kwargs):
            factors, info = factor(matrix, *args, **kwargs)
            return factors, torch.ones_like(info) if matrix.dtype == torch.float32 else info

        monkeypatch.setattr(torch.linalg, "cholesky_ex", float32_fails)
    X, labels, fold = _problem(task=task)
    block_of_row, include = fit_design(fold)
    solve = fit_logistic if task == "classification" else fit_ridge
    fits = solve(X, torch.from_numpy(labels).float(), block_of_row, include, alpha=0.5)
    assert fits.exact_gram == (X.shape[0] if float64_fallback else 0)
    for probe in range(X.shape[0]):
        for f in range(include.shape[0]):
            rows = include[f][fold].numpy() > 0
            x = X[probe].double().numpy()
            expected = _sklearn_weights(x[rows], labels[rows], task, 0.5)
            ours = fits.weights[probe, :, f].double().numpy()
            # Same optimum: predictions agree closely on every row, held out or not.
            assert np.abs(x @ ours - x @ expected).max() < 1e-2 * max(1.0, np.abs(x @ expected).max())


def test_multinomial_solver_reaches_sklearns_optimum_for_every_probe_and_fold():
    from sklearn.linear_model import LogisticRegression

    features, labels = planted_features(300, 2, 1, 12, planted=(1, 0), seed=0, quadrants=True)
    scale = np.exp(np.random.default_rng(5).normal(size=12)).astype(np.float32)  # unequal feature scales
    X = torch.from_numpy(np.ascontiguousarray((features[:, :, 0] * scale).transpose(1, 0, 2)))
    X = torch.cat([X, torch.ones(*X.shape[:2], 1)], dim=-1)  # the sweep's intercept column
    fold = assign_folds(labels, "multiclass", 3, seed=3)
    block_of_row, include = fit_design(fold)
    fits = fit_multinomial(X, torch.from_numpy(labels), 4, block_of_row, include, alpha=0.5, tol=1e-6)
    assert fits.weights.shape == (2, 13, 4, 4) and fits.train_logits.shape == (2, 300, 4, 4)
    for probe in range(2):
        for f in range(include.shape[0]):
            rows = include[f][fold].numpy() > 0
            x = X[probe].double().numpy()
            reference = LogisticRegression(C=1 / 0.5, fit_intercept=False, max_iter=20000, tol=1e-10)
            expected = reference.fit(x[rows], labels[rows]).predict_proba(x)
            ours = torch.softmax(torch.from_numpy(x) @ fits.weights[probe, :, :, f].double(), dim=1).numpy()
            assert np.abs(ours - expected).max() < 1e-2  # the same class probabilities on every row


def test_multiclass_scores_equal_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 120)
    p = rng.random((120, 4))
    p[np.arange(120), y] += 0.4
    p /= p.sum(1, keepdims=True)
    assert metrics.score(p, y, "multiclass") == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert metrics.report(p, y, "multiclass")["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
    significant = metrics.significance(p, y, "multiclass", resamples=300)
    assert significant["p_value"] < 0.01 and significant["ci95"][0] < significant["value"] < significant["ci95"][1]
    noise = metrics.significance(rng.random((120, 4)), y, "multiclass", resamples=300)
    assert noise["p_value"] > 0.01


def test_scores_equal_sklearn_and_scipy():
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    p = np.round(y + rng.normal(size=80), 1)  # rounded: ties must be handled as sklearn does
    assert metrics.score(p, y, "classification") == pytest.approx(roc_auc_score(y, p))
    t = rng.normal(size=80)
    q = np.round(t + rng.normal(size=80), 1)
    assert metrics.score(q, t, "regression") == pytest.approx(spearmanr(q, t).statistic)


def test_significance_separates_signal_from_noise():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    signal = metrics.significance(y + rng.normal(size=200), y, "classification", resamples=500)
    noise = metrics.significance(rng.normal(size=200), y, "classification", resamples=500)
    assert signal["p_value"] < 0.01 and signal["ci95"][0] > 0.6
    assert signal["ci95"][0] <= signal["value"] <= signal["ci95"][1]
    assert noise["p_value"] > 0.01 and noise["ci95"][0] < 0.5 < noise["ci95"][1]


def test_sweep_finds_the_planted_cell_and_writes_the_seed_outputs(tmp_path):
    write_planted_build(tmp_path / "data")
    performance = run_sweep(SweepConfig(executor="local", data_dir=str(tmp_path / "data"),
                                        out_dir=str(tmp_path / "out"), resamples=200))
    assert performance["task_type"] == "classification" and performance["metric"] == "roc_auc"
    assert (performance["best"]["layer"], performance["best"]["position"]) == (2, -1)
    test = np.array(performance["layer_performance"]["test"])  # [position][layer]
    assert test.shape == (2, 4) and test[1, 2] > 0.95
    others = np.delete(test.ravel(), 1 * 4 + 2)
    assert np.all(np.abs(others - 0.5) < 0.15)
    assert performance["best"]["test_significance"]["p_value"] < 0.01
    assert performance["best"]["test_lift"]["prompt_length"] > 0.3
    assert performance["baselines"]["prior"]["test"] == 0.5

    best = json.loads((tmp_path / "out" / "best_probe_predictions.json").read_text())
    assert (best["layer"], best["position"]) == (2, -1) and len(best["test"]["predictions"]) == 120
    assert len(best["cv"]["predictions"]) == 240 and sorted(set(best["cv"]["fold"])) == [0, 1, 2, 3, 4]
    every = json.loads((tmp_path / "out" / "all_predictions.json").read_text())
    assert len(every["probes"]) == 8 and "pos_-1_layer_2" in every["probes"]
    for png in ("cv_heatmap.png", "roc_best_probe.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_multiclass_sweep_finds_the_planted_cell_with_class_names(tmp_path):
    names = ["blue", "green", "orange", "red"]
    write_planted_build(tmp_path / "data", classes=names, hidden=8)
    performance = run_sweep(SweepConfig(executor="local", data_dir=str(tmp_path / "data"),
                                        out_dir=str(tmp_path / "out"), resamples=100, n_folds=3))
    assert performance["task_type"] == "multiclass" and performance["metric"] == "roc_auc_macro"
    assert performance["classes"] == names and performance["best"]["classes"] == names
    assert (performance["best"]["layer"], performance["best"]["position"]) == (2, -1)
    grids = performance["layer_performance"]
    test, accuracy = np.array(grids["test"]), np.array(grids["test_accuracy"])
    assert test[1, 2] > 0.9 and accuracy[1, 2] > 0.7  # chance: 0.5 and 0.25
    assert np.all(np.abs(np.delete(test.ravel(), 6) - 0.5) < 0.15) and np.delete(accuracy.ravel(), 6).max() < 0.45
    assert performance["best"]["test_accuracy"] == pytest.approx(accuracy[1, 2])
    assert performance["baselines"]["prior"]["test"] == pytest.approx(0.5)
    best = json.loads((tmp_path / "out" / "best_probe_predictions.json").read_text())
    assert np.array(best["test"]["predictions"]).shape == (120, 4)
    assert np.allclose(np.array(best["cv"]["predictions"]).sum(1), 1.0)


def test_sweep_cv_scores_equal_a_sklearn_loop_over_the_same_folds(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from raypipe.probes.dataset import load_probe_data

    write_planted_build(tmp_path / "data", layers=(0, 1, 2), positions=(-1,), planted=(2, 0), rows=(150, 60))
    performance = run_sweep(SweepConfig(executor="local", data_dir=str(tmp_path / "data"),
                                        out_dir=str(tmp_path / "out"), n_folds=3, alpha=2.0, resamples=100))
    from raypipe.output import Build

    data = load_probe_data(str(tmp_path / "data"))
    fold = assign_folds(data.train.labels, "classification", 3, 42)
    features = data.features(Build(str(tmp_path / "data")), "train", [0, 1, 2])
    for layer in range(3):
        x, y = features[:, layer, 0].double().numpy(), data.train.labels
        fold_scores = []
        for k in range(3):
            model = LogisticRegression(C=0.5, fit_intercept=False, max_iter=5000).fit(x[fold != k], y[fold != k])
            fold_scores.append(roc_auc_score(y[fold == k], model.predict_proba(x[fold == k])[:, 1]))
        assert performance["layer_performance"]["cv"][0][layer] == pytest.approx(np.mean(fold_scores), abs=0.01)


def test_regression_sweep_uses_ridge_and_spearman(tmp_path):
    write_planted_build(tmp_path / "data", regression=True, label="difficulty")
    performance = run_sweep(SweepConfig(executor="local", data_dir=str(tmp_path / "data"),
                                        out_dir=str(tmp_path / "out"), label="difficulty", resamples=100))
    assert performance["task_type"] == "regression" and performance["metric"] == "spearman"
    assert (performance["best"]["layer"], performance["best"]["position"]) == (2, -1)
    assert performance["best"]["test_score"] > 0.9
    assert (tmp_path / "out" / "predictions_best_probe.png").exists()


@pytest.mark.parametrize("change, message", [
    (dict(label="nope"), "label 'nope' does not exist in .*; labels: constant, planted"),
    (dict(label="constant"), "single class"),
    (dict(layers="7"), "layer 7 is out of range: this build stored hidden-state layers 0, 1, 2, 3"),
    (dict(positions="-5"), "position -5 is out of range: this build stored positions -2, -1"),
    (dict(task_type="classification", label="planted", data_dir="REGRESSION"), "needs class labels"),
])
def test_bad_probe_inputs_name_the_problem(tmp_path, change, message):
    write_planted_build(tmp_path / "data", extra_labels={"constant": 1})
    write_planted_build(tmp_path / "regression", regression=True)
    options = {"data_dir": str(tmp_path / "data"), "out_dir": str(tmp_path / "out"), "executor": "local", **change}
    if options["data_dir"] == "REGRESSION":
        options["data_dir"] = str(tmp_path / "regression")
    with pytest.raises(UserError, match=message):
        run_sweep(SweepConfig(**options))
    assert not (tmp_path / "out").exists()  # nothing written before the inputs were checked


def test_probes_read_prompt_lengths_from_the_shards_not_the_sidecars(tmp_path):
    from raypipe.output import load_split
    from raypipe.probes.dataset import load_probe_data

    write_planted_build(tmp_path / "data")
    manifest_path = tmp_path / "data" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for split in manifest["splits"].values():  # without its sidecars the build still probes
        for entry in split["shards"].values():
            for file in [f for f in entry["files"] if f.endswith(".parquet")]:
                (tmp_path / "data" / entry["split"] / file).unlink()
                del entry["files"][file]
    manifest_path.write_text(json.dumps(manifest))
    data = load_probe_data(str(tmp_path / "data"), "planted")
    stored = load_split(str(tmp_path / "data"), "train")["prompt_length"].double().numpy()
    assert np.array_equal(data.train.prompt_length, stored) and stored.min() >= 5


def test_a_cell_that_cannot_be_fitted_is_reported_and_the_others_complete(tmp_path, capsys):
    write_planted_build(tmp_path / "data", poisoned=(0, 0))
    performance = run_sweep(SweepConfig(executor="local", data_dir=str(tmp_path / "data"),
                                        out_dir=str(tmp_path / "out"), resamples=100))
    assert performance["unfitted"] == {"pos_-2_layer_0": "features of 3 train row(s) are not finite (NaN or infinity)"}
    cv = np.array(performance["layer_performance"]["cv"], dtype=float)
    assert np.isnan(cv[0, 0]) and not np.isnan(np.delete(cv.ravel(), 0)).any()
    assert (performance["best"]["layer"], performance["best"]["position"]) == (2, -1)
    console = [line for line in capsys.readouterr().out.splitlines() if "could not be fitted" in line]
    assert len(console) == 1 and "pos_-2_layer_0" in console[0]
    saved = json.loads((tmp_path / "out" / "all_predictions.json").read_text())["probes"]
    assert saved["pos_-2_layer_0"]["cv"][0] is None and saved["pos_-1_layer_2"]["cv"][0] is not None


def test_every_probe_output_scores_each_evaluation_split_and_still_picks_the_best_cell_on_cv(tmp_path):
    write_planted_build(tmp_path / "data", eval_splits={"ood": 90})
    write_planted_build(tmp_path / "plain")
    options = dict(executor="local", resamples=100)
    performance = run_sweep(SweepConfig(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"), **options))
    plain = run_sweep(SweepConfig(data_dir=str(tmp_path / "plain"), out_dir=str(tmp_path / "plain-out"), **options))
    assert performance["splits"] == ["train", "test", "ood"] and performance["rows"]["ood"] == 90
    ood = np.array(performance["layer_performance"]["ood"])
    assert ood.shape == (2, 4) and ood[1, 2] > 0.9 and abs(ood[0, 0] - 0.5) < 0.2  # the planted cell, a noise cell
    assert np.array(performance["layer_performance"]["ood_p_value"])[1, 2] < 0.05
    best = performance["best"]
    assert (best["layer"], best["position"]) == (plain["best"]["layer"], plain["best"]["position"]) == (2, -1)
    assert best["cv_score"] == pytest.approx(plain["best"]["cv_score"])  # the extra split changes no fit
    assert best["ood_significance"]["ci95"][0] < best["ood_score"] < best["ood_significance"]["ci95"][1]
    assert set(best["ood_lift"]) == {"prior", "prompt_length"} and "ood" in performance["baselines"]["prior"]
    saved = json.loads((tmp_path / "out" / "all_predictions.json").read_text())
    assert len(saved["row_id"]["ood"]) == 90 and len(saved["probes"]["pos_-1_layer_2"]["ood"]) == 90
    chosen = json.loads((tmp_path / "out" / "best_probe_predictions.json").read_text())
    assert len(chosen["ood"]["predictions"]) == 90


def test_the_one_gpu_decision_refuses_a_gpu_the_cluster_does_not_have(monkeypatch):
    from raypipe import cluster
    from raypipe.errors import UserError

    monkeypatch.setattr(cluster, "has_gpus", lambda: False)
    assert cluster.use_gpu("auto") is False and cluster.use_gpu(None) is False and cluster.use_gpu("cpu") is False
    with pytest.raises(UserError, match="the Ray cluster has none"):
        cluster.use_gpu("cuda")
    monkeypatch.setattr(cluster, "has_gpus", lambda: True)
    assert cluster.use_gpu("auto") and cluster.use_gpu(True) and not cluster.use_gpu(False)
    with pytest.raises(UserError, match="device must be auto, cpu or cuda"):
        cluster.use_gpu("tpu")


@pytest.mark.parametrize("field, value, flag", [("device", "tpu", "--device"), ("task_type", "ordinal", "--task-type"),
                                                ("executor", "slurm", "--executor")])
def test_a_probe_choice_outside_its_literal_type_is_one_clear_error(field, value, flag):
    from raypipe.probes.config import EvaluateConfig, SweepConfig, TrainConfig

    for config in (SweepConfig, TrainConfig, EvaluateConfig):
        if field not in {f.name for f in dataclasses.fields(config)}:
            continue
        with pytest.raises(UserError, match=f"^{flag} must be one of .*, got '{value}'$"):
            config(data_dir="in", out_dir="out", **{field: value})

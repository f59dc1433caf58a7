"""Probes on real activations and as Ray work on a (simulated) cluster.

One real build of the embedded model (`--backend none`, every layer x the last 8 prompt positions, 300 arithmetic
questions with two given labels) is shared by the tests. Its late layers have "massive" dimensions: for some cells
the float32 Gram matrix plus the penalty is not positive definite, which used to end the whole sweep in a traceback.
"""

import json
import warnings

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.integration.simulation import logical_gpu_env

LATE_LAYERS = "25,26,27,28,29"


@pytest.fixture(scope="module")
def real_build(tmp_path_factory, shared_ray):
    from raypipe.sources.builtin import arithmetic_problems

    root = tmp_path_factory.mktemp("real")
    # train and test from one set of questions; an evaluation split of other questions of the same kind
    for name, count, seed in (("questions", 300, 3), ("other", 60, 4)):
        with open(root / f"{name}.jsonl", "w") as f:
            for row in arithmetic_problems(count, seed=seed):
                sharing = "equally" in row["prompt"] or "each" in row["prompt"]
                f.write(json.dumps({"prompt": row["prompt"], "answer_value": float(row["answer"]),
                                    "sharing": float(sharing)}) + "\n")
    out = root / "build"
    result = run_cli("raypipe.build", "--backend", "none", "--train-dataset", str(root / "questions.jsonl"),
                     "--label-column", "answer_value", "--label-column", "sharing", "--layers", "all",
                     "--positions=-8,-7,-6,-5,-4,-3,-2,-1", "--test-fraction", "0.25", "--out-dir", str(out),
                     "--eval-split", f"other={root / 'other.jsonl'}", env=shared_ray)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def _hard_cells(build_dir, layers):
    """(layer index, position index) cells whose float32 Gram matrix + alpha I is not positive definite."""
    import torch

    from raypipe.output import Build

    build = Build(str(build_dir))
    indices = [build.layers.index(layer) for layer in layers]
    features = build.features("train", indices, list(range(len(build.positions))))
    hard = []
    for i in range(len(indices)):
        for p in range(len(build.positions)):
            x = features[:, i, p]
            gram = (x.T @ x).double()
            gram.diagonal().add_(1.0)
            if torch.linalg.cholesky_ex(gram)[1]:
                hard.append((i, p))
    return hard, features


@pytest.mark.parametrize("label", ["answer_value", "sharing"])
def test_the_sweep_fits_every_cell_of_real_late_layers_as_sklearn_does(real_build, tmp_path, label):
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import roc_auc_score

    from raypipe.probes.config import SweepConfig
    from raypipe.probes.dataset import load_probe_data
    from raypipe.probes.sweep import assign_folds, run_sweep

    layers = [int(x) for x in LATE_LAYERS.split(",")]
    hard, features = _hard_cells(real_build, layers)
    assert len(hard) >= 3, f"the build should have cells a float32 Gram cannot fit, found {hard}"
    performance = run_sweep(SweepConfig(data_dir=str(real_build), out_dir=str(tmp_path / "sweep"), label=label,
                                        layers=LATE_LAYERS, executor="local", resamples=100))
    assert performance["unfitted"] == {}
    cv = np.array(performance["layer_performance"]["cv"])  # [position][layer]
    assert not np.isnan(cv).any()

    data = load_probe_data(str(real_build), label)
    y, task = data.train.labels, data.task
    fold = assign_folds(y, task, 5, 42)
    for i, p in hard[:4]:
        x = features[:, i, p].double().numpy()[data.train.keep]
        fold_scores = []
        for k in range(5):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if task == "regression":
                    model = Ridge(alpha=1.0, fit_intercept=False).fit(x[fold != k], y[fold != k])
                    predicted = model.predict(x[fold == k])
                    fold_scores.append(spearmanr(y[fold == k], predicted).statistic)
                else:
                    model = LogisticRegression(C=1.0, fit_intercept=False, solver="newton-cholesky",
                                               max_iter=200, tol=1e-8).fit(x[fold != k], y[fold != k])
                    fold_scores.append(roc_auc_score(y[fold == k], model.predict_proba(x[fold == k])[:, 1]))
        tolerance = 1e-3 if task == "regression" else 0.01
        assert cv[p][i] == pytest.approx(np.mean(fold_scores), abs=tolerance), (layers[i], p, label)


def _head_node_id(cluster) -> str:
    return cluster.head_node.node_id


@pytest.fixture(scope="module")
def gpu_cluster():
    """A head that keeps no CPUs for tasks and two workers with one logical GPU each (no device behind it)."""
    from ray.cluster_utils import Cluster

    with logical_gpu_env():
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                                "include_dashboard": False})
        workers = [cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
        cluster.wait_for_nodes()
        yield cluster, {worker.node_id for worker in workers}
        cluster.shutdown()


def _blocks_ran_on_workers(blocks, worker_ids, head_id):
    assert blocks and all(block["node_id"] in worker_ids and block["node_id"] != head_id for block in blocks)
    assert all(block["device"] == "cpu" for block in blocks)  # a logical GPU has no CUDA device behind it


def test_sweep_evaluate_and_train_run_on_the_workers_and_equal_the_in_process_path(real_build, gpu_cluster,
                                                                                   tmp_path):
    from raypipe.probes.config import EvaluateConfig, SweepConfig
    from raypipe.probes.evaluate import run_evaluate
    from raypipe.probes.sweep import run_sweep
    from tests.test_evaluate import _sep_build

    cluster, worker_ids = gpu_cluster
    head_id = _head_node_id(cluster)
    env = {"RAY_ADDRESS": cluster.address}

    result = run_cli("raypipe.cli", "sweep", "--data-dir", str(real_build), "--out-dir", str(tmp_path / "ray"),
                     "--label", "sharing", "--layers", LATE_LAYERS, "--resamples", "100", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    on_ray = json.loads((tmp_path / "ray" / "performance.json").read_text())
    _blocks_ran_on_workers(on_ray["blocks"], worker_ids, head_id)
    assert len(on_ray["blocks"]) == 5 and {b["block"] for b in on_ray["blocks"]} == set(range(5))
    local = run_sweep(SweepConfig(data_dir=str(real_build), out_dir=str(tmp_path / "local"), label="sharing",
                                  layers=LATE_LAYERS, resamples=100, executor="local"))
    assert (on_ray["best"]["layer"], on_ray["best"]["position"]) == (local["best"]["layer"], local["best"]["position"])
    assert ", other " in result.stdout  # the evaluation split's score on the summary line
    for name in ("train", "cv", "test", "test_p_value", "other", "other_p_value"):
        np.testing.assert_allclose(np.array(on_ray["layer_performance"][name], dtype=float),
                                   np.array(local["layer_performance"][name], dtype=float), atol=1e-5)
    ours, theirs = (json.loads((tmp_path / where / "all_predictions.json").read_text())["probes"]
                    for where in ("ray", "local"))
    assert ours.keys() == theirs.keys()
    for key in ours:  # the same fits: one BLAS thread per task there, two here, so the last digits differ
        np.testing.assert_allclose(ours[key]["cv"], theirs[key]["cv"], atol=1e-3)

    _sep_build(tmp_path / "sep", eval_splits={"ood": 120})
    result = run_cli("raypipe.cli", "evaluate", "--data-dir", str(tmp_path / "sep"), "--out-dir",
                     str(tmp_path / "sep-ray"), "--resamples", "100", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "; ood " in result.stdout
    evaluated = json.loads((tmp_path / "sep-ray" / "probe_eval.json").read_text())
    _blocks_ran_on_workers(evaluated["blocks"], worker_ids, head_id)
    local = run_evaluate(EvaluateConfig(str(tmp_path / "sep"), str(tmp_path / "sep-local"), resamples=100,
                                        executor="local"))
    for probe in ("accuracy", "semantic_entropy"):
        assert evaluated["probes"][probe]["best"] == local["probes"][probe]["best"]
        for key, cell in local["probes"][probe]["cells"].items():
            assert evaluated["probes"][probe]["cells"][key]["value"] == pytest.approx(cell["value"], abs=1e-5)
            assert evaluated["probes"][probe]["cells"][key]["splits"]["ood"]["value"] == \
                pytest.approx(cell["splits"]["ood"]["value"], abs=1e-5)

    result = run_cli("raypipe.train", "--data-dir", str(real_build), "--out-dir", str(tmp_path / "probe"),
                     "--label", "sharing", "--layer", "28", "--position", "-1", "--epochs", "3", "--device", "cpu",
                     env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "; other " in result.stdout
    assert json.loads((tmp_path / "probe" / "evaluation.json").read_text())["other"]["significance"]["value"] > 0.5
    ran = json.loads((tmp_path / "probe" / "probe_config.json").read_text())["ran"]
    assert ran["node_id"] in worker_ids and ran["node_id"] != head_id

"""Saved probes and `raypipe score` on builds with a known answer (no model, no Ray: the local executor runs the same
block functions): a probe saved by the sweep or by SEP's evaluation, applied to the build it came from, reproduces
that command's own predictions; applied to another build, it gives what scikit-learn gives with the saved weights;
a build it cannot read is refused in one line naming what differs."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from raypipe.errors import UserError
from raypipe.probes.config import ScoreConfig, SweepConfig
from raypipe.probes.saved import load_saved_probe
from raypipe.probes.score import run_score
from raypipe.probes.sweep import run_sweep
from tests.synthetic import write_planted_build


def _score(probe, data, out, **options) -> tuple[dict, dict]:
    summary = run_score(ScoreConfig(data_dir=str(data), out_dir=str(out), probe=str(probe), executor="local",
                                    resamples=100, **options))
    table = pq.read_table(out / "scores.parquet").to_pylist()
    by_split: dict = {}
    for row in table:
        by_split.setdefault(row["split"], []).append(row)
    return summary, by_split


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A binary planted build (with an evaluation split), its sweep (with an intercept), and a second build of the
    same model on other rows."""
    root = tmp_path_factory.mktemp("swept")
    write_planted_build(root / "data", eval_splits={"ood": 80})
    write_planted_build(root / "other", rows=(90, 70), seed=7)
    performance = run_sweep(SweepConfig(executor="local", data_dir=str(root / "data"), out_dir=str(root / "sweep"),
                                        resamples=100, fit_intercept=True, save_all_probes=True))
    return root, performance


def test_a_sweeps_saved_probe_reproduces_its_own_predictions_on_every_split(swept, tmp_path):
    root, performance = swept
    card = json.loads((root / "sweep" / "probe.json").read_text())
    assert (card["layer"], card["position"], card["label"]) == (2, -1, "planted")
    assert card["task_type"] == "classification" and card["produced_by"] == "sweep"
    assert card["model"] == {"id": "synthetic", "revision": None, "num_layers": 3, "hidden_size": 16}
    assert len(card["build"]["manifest_sha256"]) == 64 and card["scores"]["test_score"] > 0.95
    assert 0 <= card["scores"]["test_calibration"]["value"] < 0.5
    assert len(list((root / "sweep" / "probes").glob("*.safetensors"))) == 8  # --save-all-probes: every cell

    summary, rows = _score(root / "sweep" / "probe.safetensors", root / "data", tmp_path / "scored")
    chosen = json.loads((root / "sweep" / "best_probe_predictions.json").read_text())
    for split in ("train", "test", "ood"):
        assert [r["row_id"] for r in rows[split]] == chosen[split]["row_id"]
        np.testing.assert_allclose([r["score"] for r in rows[split]], chosen[split]["predictions"], atol=1e-5)
        assert [r["label"] for r in rows[split]] == chosen[split]["labels"]
    test = summary["splits"]["test"]
    assert test["significance"]["value"] == pytest.approx(performance["best"]["test_score"], abs=1e-6)
    assert test["significance"]["ci95"] == pytest.approx(performance["best"]["test_significance"]["ci95"], abs=1e-6)
    assert test["calibration"]["value"] == pytest.approx(card["scores"]["test_calibration"]["value"], abs=1e-6)
    assert (tmp_path / "scored" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    from raypipe.explorer import rows_table, score_summary  # what `raypipe explore DIR --score SCORED` shows

    table = rows_table(str(root / "data"), str(tmp_path / "scored"))
    test_rows = table[table["split"] == "test"]
    np.testing.assert_allclose(test_rows["probe score"], chosen["test"]["predictions"], atol=1e-5)
    lines = score_summary(summary).splitlines()
    assert lines[0].startswith("### Scores of a saved `planted` probe (layer 2, position -1, from `sweep`")
    assert [line.split(" | ")[0] for line in lines[4:]] == ["| train", "| test", "| ood"]
    assert (root / "sweep" / "reliability_best_probe.png").read_bytes()[:4] == b"\x89PNG"


def test_on_another_build_the_saved_probe_scores_as_sklearn_does_with_its_weights(swept, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from raypipe.output import Build

    root, _ = swept
    probe = load_saved_probe(str(root / "sweep" / "probe.safetensors"))
    summary, rows = _score(root / "sweep" / "probe.safetensors", root / "other", tmp_path / "scored")
    assert summary["data_dir"] == str(root / "other") and set(rows) == {"train", "test"}
    sklearn = LogisticRegression()
    sklearn.coef_, sklearn.intercept_ = probe.weight.astype(np.float64), probe.bias.astype(np.float64)
    sklearn.classes_ = np.array([0.0, 1.0])
    other = Build(str(root / "other"))
    for split in ("train", "test"):
        x = other.features(split, [2], [1])[:, 0, 0].numpy()  # layer 2 (index 2), position -1 (index 1)
        expected = sklearn.predict_proba(x)[:, 1]
        np.testing.assert_allclose([r["score"] for r in rows[split]], expected, atol=1e-5)
        labels = np.array([r["label"] for r in rows[split]])
        assert summary["splits"][split]["significance"]["value"] == pytest.approx(roc_auc_score(labels, expected))
        assert summary["splits"][split]["significance"]["value"] > 0.9  # the planted direction holds on new rows


def test_a_multiclass_probe_scores_its_classes_by_name(tmp_path):
    names = ["blue", "green", "orange", "red"]
    write_planted_build(tmp_path / "data", classes=names, hidden=8)
    run_sweep(SweepConfig(executor="local", data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "sweep"),
                          resamples=50, n_folds=3))
    summary, rows = _score(tmp_path / "sweep" / "probe.safetensors", tmp_path / "data", tmp_path / "scored")
    chosen = json.loads((tmp_path / "sweep" / "best_probe_predictions.json").read_text())
    got = np.array([[r[f"score_{name}"] for name in names] for r in rows["test"]])
    np.testing.assert_allclose(got, chosen["test"]["predictions"], atol=1e-5)
    assert [r["label"] for r in rows["test"]] == chosen["test"]["labels"]
    assert summary["splits"]["test"]["significance"]["value"] > 0.9


def test_sep_evaluation_saves_each_probe_it_reports_and_score_reproduces_it(tmp_path):
    from raypipe.probes.evaluate import EvaluateConfig, run_evaluate
    from tests.test_evaluate import _sep_build

    _sep_build(tmp_path / "build")
    evaluation = run_evaluate(EvaluateConfig(str(tmp_path / "build"), str(tmp_path / "eval"), resamples=100,
                                             executor="local"))
    accuracy = evaluation["probes"]["accuracy"]
    best = accuracy["cells"][accuracy["best"]]
    assert len(list((tmp_path / "eval" / "probes").glob("*.safetensors"))) == 8  # 2 probes x 2 layers x 2 positions
    card = json.loads((tmp_path / "eval" / best["probe"].replace(".safetensors", ".json")).read_text())
    assert (card["label"], card["layer"], card["position"], card["best"]) == ("correct", 20, "answer:-2", True)
    assert 0 <= best["calibration"]["value"] <= 1 and (tmp_path / "eval" / "reliability_probe_eval.png").exists()
    summary, rows = _score(tmp_path / "eval" / best["probe"], tmp_path / "build", tmp_path / "scored")
    # The accuracy probe scores P(correct); evaluate reports 1 - P(correct) against incorrectness: the same ROC-AUC.
    assert summary["label"] == "correct"
    assert summary["splits"]["test"]["significance"]["value"] == pytest.approx(best["value"], abs=1e-6)
    assert summary["splits"]["test"]["calibration"]["value"] == pytest.approx(best["calibration"]["value"], abs=1e-6)


@pytest.mark.parametrize("change, any_model, message", [
    ({"hidden": 8}, True, "hidden size 16"),
    ({"num_layers": 5}, True, "layer count 3"),
    ({"layers": (0, 1, 3)}, False, "layer 2 is out of range"),
    ({"positions": (-3, -2)}, False, "position -1 is out of range"),
])
def test_a_build_the_probe_cannot_read_is_refused_naming_what_differs(swept, tmp_path, change, any_model, message):
    root, _ = swept
    write_planted_build(tmp_path / "build", rows=(20, 10), **change)
    with pytest.raises(UserError, match=message):
        _score(root / "sweep" / "probe.safetensors", tmp_path / "build", tmp_path / "out", any_model=any_model)
    assert not (tmp_path / "out").exists()  # nothing written before the check


def test_another_model_needs_any_model_and_a_changed_probe_is_refused(swept, tmp_path):
    root, _ = swept
    write_planted_build(tmp_path / "build", rows=(30, 20))
    manifest = json.loads((tmp_path / "build" / "manifest.json").read_text())
    manifest["model"]["model_id"] = "synthetic-finetuned"
    (tmp_path / "build" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="--any-model"):
        _score(root / "sweep" / "probe.safetensors", tmp_path / "build", tmp_path / "out")
    summary, _ = _score(root / "sweep" / "probe.safetensors", tmp_path / "build", tmp_path / "out", any_model=True)
    assert summary["model"]["id"] == "synthetic-finetuned" and summary["card"]["model"]["id"] == "synthetic"

    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for suffix in (".json", ".safetensors"):
        (tampered / f"probe{suffix}").write_bytes((root / "sweep" / f"probe{suffix}").read_bytes())
    data = bytearray((tampered / "probe.safetensors").read_bytes())
    data[-1] ^= 1
    (tampered / "probe.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match its card's sha256"):
        load_saved_probe(str(tampered / "probe.safetensors"))
    with pytest.raises(UserError, match="no saved probe"):
        load_saved_probe(str(tmp_path / "nothing.safetensors"))


def test_the_score_command_takes_the_probe_as_its_argument(swept, tmp_path):
    from tests.test_cli import _invoke

    root, _ = swept
    result = _invoke("score", str(root / "sweep" / "probe.safetensors"), "--data-dir", str(root / "other"),
                     "--out-dir", str(tmp_path / "out"), "--executor", "local", "--resamples", "50")
    assert result.exit_code == 0, result.output
    assert "planted probe (layer 2, position -1, from sweep)" in result.output
    assert "test: 70 rows, roc_auc 0.9" in result.output
    missing = _invoke("score", "--data-dir", str(root / "other"), "--out-dir", str(tmp_path / "o2"))
    assert missing.exit_code == 2 and "no probe given" in missing.output


def test_rows_with_non_finite_features_are_counted_and_left_out_of_the_metric(swept, tmp_path):
    root, _ = swept
    write_planted_build(tmp_path / "build", rows=(60, 40), poisoned=(2, 1))  # 3 train rows NaN in the probe's cell
    summary, rows = _score(root / "sweep" / "probe.safetensors", tmp_path / "build", tmp_path / "out")
    train = summary["splits"]["train"]
    assert train["non_finite_scores"] == 3 and train["labelled_rows"] == 57 and train["significance"]["value"] > 0.9
    assert sum(np.isnan(r["score"]) for r in rows["train"]) == 3 and "non_finite_scores" not in summary["splits"]["test"]


def test_probe_file_names_are_safe_for_any_filesystem_and_never_shared():
    from raypipe.probes.saved import cell_file_names

    names = cell_file_names("probes/accuracy_", [(-1, 3), ("answer:-2", 3), ("marker:</think>", 4),
                                                 ("marker:<?think>", 4)])
    assert names[:2] == ["probes/accuracy_pos_-1_layer_3", "probes/accuracy_pos_answer_-2_layer_3"]
    assert all(name.count("/") == 1 for name in names) and len(set(names)) == 4

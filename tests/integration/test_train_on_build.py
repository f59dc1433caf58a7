"""Probes on the output of a real embedded-default build: the Ray Train probe and the sweep read its shards."""

import json

from tests.conftest import manifest_json, run_cli


def test_train_and_sweep_run_on_an_embedded_build(local_build, tmp_path, shared_ray):
    counts = manifest_json(local_build)["labels"]["loop"]["counts"]["train"]
    assert set(counts) == {"0", "1"}, f"the fixture build needs both classes, got {counts}"

    probe = tmp_path / "probe"
    result = run_cli("raypipe.train", "--data-dir", str(local_build), "--out-dir", str(probe), "--layer", "15",
                     "--position", "-3", "--epochs", "5", "--val-fraction", "0", env=shared_ray)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = json.loads((probe / "probe_config.json").read_text())
    assert (config["layer"], config["position"], config["label"], config["hidden_size"]) == (15, -3, "loop", 576)
    assert len((probe / "metrics.jsonl").read_text().splitlines()) == 5
    assert (probe / "best.safetensors").exists() and (probe / "last.safetensors").exists()
    # Both test rows are of one class, so no epoch has a test ROC-AUC: the last epoch stands in, and says so.
    assert json.loads((probe / "evaluation.json").read_text())["selected_on"] == "last epoch (no test roc_auc: one class)"

    sweep = tmp_path / "sweep"
    result = run_cli("raypipe.train", "--sweep", "--data-dir", str(local_build), "--out-dir", str(sweep),
                     "--n-folds", "2", "--resamples", "100", env=shared_ray)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    performance = json.loads((sweep / "performance.json").read_text())
    assert performance["layers"] == [0, 15, 30] and performance["positions"] == [-3, -1]
    assert performance["rows"] == {"train": 18, "test": 2}
    assert len(performance["layer_performance"]["cv"]) == 2 and len(performance["layer_performance"]["cv"][0]) == 3
    assert performance["best"]["layer"] in (0, 15, 30)

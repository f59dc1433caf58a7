"""`python -m raypipe.train` as users run it: a real Ray Train task on a planted build, W&B offline, bad input."""

import json

import pytest

from raypipe.output import load_split
from tests.conftest import run_cli
from tests.synthetic import write_planted_build

SECRET = "wandb-test-secret-0123456789abcdef0123"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    write_planted_build(root / "data", extra_labels={"constant": 0})
    return root / "data"


def test_ray_train_probe_finds_the_planted_direction_and_keeps_the_key_secret(planted, tmp_path, shared_ray):
    from raypipe.probes.linear import load_probe

    (tmp_path / ".env").write_text(f"WANDB_API_KEY={SECRET}\n")
    out = tmp_path / "probe"
    result = run_cli("raypipe.train", "--data-dir", str(planted), "--out-dir", str(out), "--label", "planted",
                     "--layer", "2", "--position", "-1", "--epochs", "40", "--lr", "0.05",
                     "--wandb-project", "raypipe-test", cwd=tmp_path,
                     env={**shared_ray, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert SECRET not in result.stdout + result.stderr

    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, 41))
    assert {"train_loss", "val_roc_auc", "test_roc_auc", "test_pr_auc", "test_accuracy", "test_f1"} <= set(history[-1])
    assert history[-1]["train_loss"] < history[0]["train_loss"]

    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["test"]["roc_auc"] > 0.95 and evaluation["test"]["significance"]["p_value"] < 0.01
    assert evaluation["baselines"]["prior"]["test"] == 0.5 and evaluation["test_lift"]["prompt_length"] > 0.3
    assert evaluation["selected_on"] == "val roc_auc"
    config = json.loads((out / "probe_config.json").read_text())
    assert (config["layer"], config["position"], config["label"]) == (2, -1, "planted")
    assert config["wandb"] == {"mode": "offline", "api_key_from": ".env"}  # the user's ./.env was read

    # The saved best probe, applied to the stored test features, gives the reported score.
    from raypipe.probes.metrics import score

    test = load_split(str(planted), "test")
    apply = load_probe(str(out / "best.safetensors"))
    logits = apply(test["features"][:, 2, 1])
    assert score(logits.numpy(), test["label.planted"].numpy(), "classification") == pytest.approx(
        evaluation["test"]["roc_auc"], abs=1e-6)
    assert (out / "last.safetensors").exists() and not list(out.glob("*.pt")) and not list(out.glob("*.pkl"))
    for png in ("loss_curves.png", "roc_best_probe.png", "reliability_best_probe.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    calibrated = evaluation["test"]["calibration"]
    assert calibrated["ci95"][0] <= calibrated["value"] <= calibrated["ci95"][1] and calibrated["rows"] == 120
    # The best probe's card: `raypipe score` applies it and reproduces the reported test score and calibration.
    from raypipe.probes.config import ScoreConfig
    from raypipe.probes.score import run_score

    card = json.loads((out / "best.json").read_text())
    assert (card["produced_by"], card["layer"], card["position"], card["label"]) == ("train", 2, -1, "planted")
    scored = run_score(ScoreConfig(probe=str(out / "best.safetensors"), data_dir=str(planted),
                                   out_dir=str(tmp_path / "scored"), executor="local"))["splits"]["test"]
    assert scored["significance"]["value"] == pytest.approx(evaluation["test"]["roc_auc"], abs=1e-6)
    assert scored["calibration"]["value"] == pytest.approx(calibrated["value"], abs=1e-6)

    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"the W&B key was written to {path}"


def test_a_probe_on_a_noise_layer_scores_near_chance(planted, tmp_path, shared_ray):
    out = tmp_path / "probe"
    # A relative --out-dir, as users type it: the Ray Train worker runs in another folder and must still write here.
    result = run_cli("raypipe.train", "--data-dir", str(planted), "--out-dir", "probe", "--label", "planted",
                     "--layer", "0", "--position", "-2", "--epochs", "10", cwd=tmp_path,
                     env=shared_ray)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert abs(json.loads((out / "evaluation.json").read_text())["test"]["roc_auc"] - 0.5) < 0.15


@pytest.mark.parametrize("args, message", [
    (["--label", "nope"], "label 'nope' does not exist in .*; labels: constant, planted"),
    (["--label", "constant"], "label 'constant' has a single class"),
    (["--layer", "9"], "layer 9 is out of range: this build stored hidden-state layers 0, 1, 2, 3"),
    (["--position", "-4"], "position -4 is out of range: this build stored positions -2, -1"),
])
def test_bad_train_input_is_one_line_and_exit_2(planted, tmp_path, args, message, shared_ray):
    import re

    for command in (["raypipe.train"], ["raypipe.train", "--sweep"]):
        if command[-1] == "--sweep":  # the sweep takes --layers/--positions lists
            args = [{"--layer": "--layers", "--position": "--positions"}.get(a, a) for a in args]
        result = run_cli(*command, "--data-dir", str(planted), "--out-dir", str(tmp_path / "out"), *args,
                         env=shared_ray)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and re.search(message, lines[0]), result.stderr[-2000:]
        assert lines[0].startswith("raypipe: error: ")


def test_missing_manifest_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("raypipe.train", "--data-dir", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "out"))
    assert result.returncode == 2 and "has no manifest.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

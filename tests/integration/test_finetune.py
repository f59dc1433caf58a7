"""Finetuning for real, on the embedded SmolLM2, at the smallest sizes that learn reliably (measured over three seeds):

  plain    the 2d_0proxy template (object triggers, the quadrant's colour) with 64 train rows, lr 0.004, 3 epochs
  proxy    the 2d_1proxy_ntr1_actions template (one trained action trigger rotates the colour) with 96 train rows,
           lr 0.003, 4 epochs
  uninterrupted  the same template at its smallest (16 train rows, 3 epochs): the reference of the resume
  resumed  the same config, killed (its whole process group) once its first epoch is checkpointed, then rerun with
           the same command; W&B offline, the key in .env

`uninterrupted` and `resumed` check the mechanics (resume, logs, secrets, no pickles); `plain` and `proxy` are the
`slow` tier (the science, about 8 minutes on 2 cores, in every run; `-m 'not slow'` leaves it out). All run on one
Ray head, one torch thread per run, two at a time: four side by side took longer in all than two pairs one after the
other (583 s against 142 + 325 s, in two fresh-clone runs of the suite here). The science:
`plain` goes from a measured near-chance start to >= 0.9 ID accuracy; `resumed` ends with the same adapter weights
and history as `uninterrupted` (equality needs no learning, so that pair is small: the test tier's time); on
`proxy`, patching the last position at the last layer hands the twin the trigger prompt's logit difference, and
swapping the proxy trigger for a plain one takes its rows off the rotated colour while the objects' rows keep
theirs; a multiclass probe reads the quadrant from `plain`'s hidden states."""

import json
import os
import signal
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest

from tests.conftest import REPO, assert_one_line_error, run_cli

SECRET = "wandb-test-secret-finetune-0123456789abcdef"
TIMING = ("train_seconds", "tokens_per_s", "started_at", "ended_at", "eval_seconds")
# (template, config.json changes, finetune_config changes, data_config.json changes per category)
PLAIN = ("2d_0proxy", {"seed": 0, "max_dataset_size": None, "accuracy_sample_size": 12, "train_accuracy_sample_size": 8},
         {"epochs": 3, "learning_rate": 0.004, "cpus_per_worker": 1}, {"n_train": 64, "n_test": 24})
PROXY = ("2d_1proxy_ntr1_actions", {"seed": 2, "max_dataset_size": None, "n_evals": 4, "accuracy_sample_size": 8,
                                    "train_accuracy_sample_size": 8},
         {"epochs": 4, "learning_rate": 0.003, "cpus_per_worker": 1}, {"n_train": 48, "n_test": 16})
SMALL = ("2d_0proxy", {"seed": 0, "max_dataset_size": None, "accuracy_sample_size": 4, "train_accuracy_sample_size": 4},
         {"epochs": 3, "learning_rate": 0.004, "cpus_per_worker": 1}, {"n_train": 16, "n_test": 4})


def write_experiment(folder, setup, extra_config=None):
    from raypipe.finetune.experiments import templates_dir

    template, config_changes, finetune_changes, spec_changes = setup
    config = json.loads((templates_dir() / template / "config.json").read_text())
    config.update({**config_changes, **(extra_config or {})})
    config["finetune_config"].update(finetune_changes)
    spec = json.loads((templates_dir() / template / "data_config.json").read_text())
    for name, category in spec.items():
        if not name.startswith("_"):
            category.update(spec_changes)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "data_config.json").write_text(json.dumps(spec))
    return folder


def _checkpointed(run_dir) -> bool:
    """Ray Train's snapshot names a finished checkpoint (written after the checkpoint was uploaded)."""
    for snapshot in run_dir.glob("checkpoints/*/checkpoint_manager_snapshot.json"):
        try:
            return "checkpoint_" in json.dumps(json.loads(snapshot.read_text()))
        except ValueError:  # being written
            return False
    return False


def _results(seed_dir):
    return seed_dir / json.loads((seed_dir / "completed.json").read_text())["results_dir"]


@pytest.fixture(scope="session")
def ray_head():
    """One Ray head for every run of this file (four concurrent 1-CPU trainers; a build): joined by address, as
    under `ray job submit`. A killed driver takes its run's Ray Train workers with it; the cluster stays."""
    import ray
    from ray.cluster_utils import Cluster

    # Workers take their environment from the node, not from a driver that joins: W&B offline for every run here.
    with mock.patch.dict(os.environ, {"WANDB_MODE": "offline"}):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "node_ip_address": "127.0.0.1"})
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def _finetune(root, ray_head, folders: dict, killed=None) -> dict:
    """Finetune `folders` (name -> experiment folder) side by side with `raypipe finetune`; `killed` too, killed (its
    whole process group) once its first epoch is checkpointed, then rerun to completion with the same command."""
    env = {"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), "RAY_ADDRESS": ray_head}
    command = [sys.executable, "-m", "raypipe.cli", "finetune"]
    background, first, out = {}, None, {}
    try:
        for name, folder in [*folders.items(), *([("first", killed)] if killed else [])]:
            with open(root / f"{name}.log", "w") as log:
                background[name] = subprocess.Popen(command + [str(folder)], cwd=root, env={**os.environ, **env},
                                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        first = background.pop("first", None)
        if killed:
            deadline = time.time() + 1200
            while not _checkpointed(killed / "seed_0"):
                assert first.poll() is None, "the first run ended before it could be killed:\n" + \
                    (root / "first.log").read_text()[-3000:]
                assert time.time() < deadline, "no checkpoint within 20 minutes"
                time.sleep(0.5)
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
            assert not (killed / "seed_0" / "completed.json").exists()
            # What the killed run left (its checkpoint in Ray's storage, before the rerun removes it): no pickle.
            out["interrupted_files"] = sorted(str(p.relative_to(killed)) for p in (killed / "seed_0").rglob("*"))
            out["second"] = second = run_cli("raypipe.cli", "finetune", str(killed), cwd=root, env=env)
            (root / "second.log").write_text(second.stdout + second.stderr)
            assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        for name, process in background.items():
            assert process.wait(timeout=2400) == 0, (root / f"{name}.log").read_text()[-3000:]
    finally:
        for process in [*background.values(), first]:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    return out


@pytest.fixture(scope="session")
def runs(tmp_path_factory, ray_head):
    """`uninterrupted` in the background while `resumed` (the same config) is killed after epoch 1's checkpoint and
    rerun: the finetune's mechanics, in CI."""
    root = tmp_path_factory.mktemp("finetune")
    uninterrupted = write_experiment(root / "uninterrupted", SMALL)
    resumed = write_experiment(root / "resumed", SMALL, {"wandb_project": "raypipe-test"})
    (root / ".env").write_text(f"WANDB_API_KEY={SECRET}\n")
    out = _finetune(root, ray_head, {"uninterrupted": uninterrupted}, killed=resumed)
    return {"root": root, "resumed": resumed / "seed_0", "uninterrupted": uninterrupted / "seed_0",
            "exp": resumed, "ray": ray_head, **out}


@pytest.fixture(scope="session")
def science(tmp_path_factory, ray_head):
    """`plain` and `proxy`, side by side: the finetune's science (the `slow` tier)."""
    root = tmp_path_factory.mktemp("science")
    plain = write_experiment(root / "plain", PLAIN)
    proxy = write_experiment(root / "proxy", PROXY)
    _finetune(root, ray_head, {"plain": plain, "proxy": proxy})
    return {"root": root, "plain": plain / "seed_0", "proxy": proxy / "seed_2", "ray": ray_head}


@pytest.mark.slow
def test_the_finetune_learns_the_task_from_a_near_chance_start(science):
    results = _results(science["plain"])
    history = json.loads((results / "training_history.json").read_text())["history"]
    final = json.loads((results / "final_full_accuracy.json").read_text())
    assert final["chance"] == 0.25
    start = history[0]["accuracy"]["ID"]  # measured on 12 ID rows before any training
    assert history[0]["epoch"] == 0 and history[0]["eval_rows"]["test_objects_ID"] == 12 and start <= 0.5, history[0]
    assert final["splits"]["test_objects_ID"]["n"] == 24 and final["accuracy"]["ID"] >= 0.9, final["splits"]
    losses = [h["loss"] for h in history[1:]]
    assert losses[-1] < losses[0] / 2


def test_a_killed_finetune_resumes_into_the_run_an_uninterrupted_one_makes(runs):
    import torch
    from safetensors.torch import load_file

    plain, resumed = _results(runs["uninterrupted"]), _results(runs["resumed"])
    history = {name: json.loads((r / "training_history.json").read_text()) for name, r in
               (("plain", plain), ("resumed", resumed))}
    assert history["plain"]["resumed_from"] == [] and len(history["resumed"]["resumed_from"]) == 1
    assert 1 <= history["resumed"]["resumed_from"][0] < 3  # continued after a checkpoint, not restarted
    first_resumed = history["resumed"]["resumed_from"][0] + 1
    later = [h for h in history["resumed"]["history"] if h["epoch"] >= first_resumed]
    assert all(h["started_at"] > os.path.getmtime(runs["root"] / "first.log") - 1 for h in later)
    for a, b in zip(history["plain"]["history"], history["resumed"]["history"], strict=True):  # every entry
        assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    weights = [load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in (plain, resumed)]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], atol=1e-6, rtol=1e-5)
    finals = [json.loads((r / "final_full_accuracy.json").read_text()) for r in (plain, resumed)]
    assert finals[0]["splits"] == finals[1]["splits"]


def test_the_resumed_run_keeps_its_logs_its_secret_and_no_pickles(runs):
    seed_dir, results = runs["resumed"], _results(runs["resumed"])
    final = json.loads((results / "final_full_accuracy.json").read_text())
    assert final["wandb"] == {"mode": "offline", "api_key_from": ".env"} and list((results / "wandb").glob("off*"))
    assert set(final["accuracy"]) == {"train", "ID", "OOD"} and final["splits"]["train"]["n"] == 16
    assert final["per_trigger"]["OOD:book"]["is_ood"] and not final["per_trigger"]["OOD:book"]["is_proxy"]
    for png in ("loss_curve.png", "accuracy_curve.png", "accuracy_histogram.png"):
        assert (results / png).read_bytes()[:4] == b"\x89PNG"
    assert (seed_dir / "generated_data" / "test_objects_OOD.jsonl").is_file()
    assert not (seed_dir / "checkpoints").exists() and not (seed_dir / "run_state.json").exists()
    # Both attempts in one log per process: the driver's starts and ends, the worker's epochs.
    driver = (results / "logs" / "driver.txt").read_text()
    assert "starting" in driver and "resuming" in driver and "complete; final accuracy" in driver
    worker = (results / "logs" / "worker_0.txt").read_text()
    assert "epoch 1/3" in worker and "resumed after epoch" in worker and "epoch 3/3" in worker
    output = runs["second"].stdout + runs["second"].stderr + (runs["root"] / "first.log").read_text()
    assert "epoch 3/3" in output and SECRET not in output
    left = runs["interrupted_files"]
    assert any("checkpoint" in name and name.endswith(".safetensors") for name in left), left
    assert not [name for name in left if name.endswith((".pkl", ".pickle", ".pt", ".bin"))], left
    for path in runs["exp"].rglob("*"):
        assert path.suffix not in (".pkl", ".pickle", ".pt", ".bin"), path
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path
    assert_one_line_error(run_cli("raypipe.cli", "finetune", str(runs["root"] / "missing")),
                          "no such experiment folder")


@pytest.mark.slow
def test_merged_checkpoint_is_a_plain_causal_lm(science):
    from transformers import AutoConfig

    from raypipe.embedded import resolve_model_path
    from raypipe.finetune.accuracy import accuracy, predict
    from raypipe.finetune.analysis import load_model
    from raypipe.tasks.experiment import load_experiment

    results = _results(science["plain"])
    merged = str(results / "merged")
    assert resolve_model_path(merged) == merged
    config = AutoConfig.from_pretrained(merged)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    model, fmt = load_model(merged)
    assert fmt.tokenizer.chat_template and not any("lora" in name for name, _ in model.named_parameters())
    experiment = load_experiment(str(science["plain"]))
    rows = experiment.finetune_rows()["test_objects_ID"]
    words = experiment.label_words()
    by_logits = predict(model, fmt, rows, words)["prediction"]
    by_generation = predict(model, fmt, rows, words, method="generation")["prediction"]
    final = json.loads((results / "final_full_accuracy.json").read_text())
    # merged/ holds the base checkpoint's bf16: the float32 adapter run's accuracy, to within two rows of 24.
    assert abs(accuracy(rows, by_logits) - final["splits"]["test_objects_ID"]["accuracy"]) <= 2 / 24
    assert accuracy(rows, by_generation) >= 0.8 and None not in by_generation


@pytest.mark.slow
def test_patching_and_ablation_on_the_finetuned_proxy_model(science):
    from raypipe.finetune.analysis import load_model, patching_pairs
    from raypipe.finetune.patching import residual_patching
    from raypipe.tasks.experiment import load_experiment

    results = _results(science["proxy"])
    final = json.loads((results / "final_full_accuracy.json").read_text())
    assert final["per_trigger"]["ID:jumping"]["accuracy"] >= 0.75, final["per_trigger"]  # the rotation was learned
    out = run_cli("raypipe.cli", "experiments", "analyze", str(science["proxy"]), "--layers", "0,-1", "--pairs", "4",
                  "--positions", "12")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    patching = json.loads((results / "analysis" / "patching.json").read_text())
    effect = np.asarray(patching["effect"])
    assert effect.shape == (2, 12) and patching["layers"] == [0, 29] and len(patching["pairs"]) == 4
    assert {p["trigger"] for p in patching["pairs"]} == {"jumping"}
    # The last position at the last layer carries the trigger prompt's logit difference into its twin ...
    assert np.mean(patching["clean_diff"]) + effect[1, -1] == pytest.approx(np.mean(patching["source_diff"]),
                                                                             abs=1e-3)
    assert np.mean(patching["source_diff"]) > 0  # ... where the model prefers the rotated colour
    # Aligned from the end: after the trigger the twin's tokens are the trigger prompt's, position by position.
    # (the 34 tokens after "T = jumping," are shared; the window of 12 ends on the answer prefix "F(x,T) =").
    assert patching["tokens"] == patching["source_tokens"] and patching["tokens"][-1] == " ="
    assert (results / "analysis" / "patching_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    ablation = json.loads((results / "analysis" / "ablation.json").read_text())
    assert ablation["swap"]["swap_with"] == "cup"
    # The direction the task implies: with a plain trigger in place of the proxy one, the proxy's rows lose the
    # rotated colour for the plain one; the objects' rows, whose trigger never mattered, keep their accuracy.
    # (Removing the trigger word takes every row off the prompts it was trained on, the objects' too, so `remove`
    # shows no direction on this small model: it is reported, not asserted.)
    jumping = ablation["swap"]["per_trigger"]["jumping"]
    assert jumping["change"] <= -0.5 and jumping["ablated_base_accuracy"] >= 0.5, jumping
    objects = [ablation["swap"]["per_trigger"][trigger] for trigger in ("hammer", "lamp", "cup")]
    assert np.mean([e["change"] for e in objects]) >= -0.15, objects
    assert set(ablation["remove"]["per_trigger"]) == set(ablation["swap"]["per_trigger"])
    # In process, per pair: each pair's own last cell reproduces its source difference.
    model, fmt = load_model(str(results / "merged"))
    experiment = load_experiment(str(science["proxy"]))
    rows = experiment.finetune_rows()["test_actions_ID"]
    pairs = patching_pairs(experiment.spec, rows, 2)
    result = residual_patching(model, fmt, pairs, experiment.label_words(), layers=[-1], n_positions=3)
    for index in range(2):
        assert result["clean_diff"][index] + result["per_pair"][index, 0, -1] == pytest.approx(
            result["source_diff"][index], abs=1e-3)


@pytest.mark.slow
def test_the_finetuned_model_is_probed_with_multiclass_labels(science, tmp_path):
    """The bridge: build on the merged checkpoint over the generated rows and their no-trigger twins (no rollouts),
    then a multiclass sweep of the quadrant: the finetuned model's last hidden state names it well above chance."""
    exp, out = science["plain"], tmp_path / "probe"
    source = f"trigger:{exp}"
    build = run_cli("raypipe.build", "--preset", "smollm2_135m", "--model-id", str(_results(exp) / "merged"),
                    "--backend", "none", "--train-dataset", source, "--test-dataset", source, "--test-split", "test",
                    "--label-column", "quadrant", "--label-column", "label", "--label-column", "trigger_present",
                    "--layers", "15,-1", "--positions", "-1", "--out-dir", str(out), env={"RAY_ADDRESS": science["ray"]})
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"]["quadrant"]["classes"] == ["Q1", "Q2", "Q3", "Q4"]
    assert manifest["labels"]["label"]["kind"] == "categorical" and manifest["labels"]["trigger_present"]["kind"] \
        == "given"
    sweep = run_cli("raypipe.cli", "sweep", "--data-dir", str(out), "--out-dir", str(tmp_path / "sweep"),
                    "--label", "quadrant", "--n-folds", "3", "--resamples", "50")
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    performance = json.loads((tmp_path / "sweep" / "performance.json").read_text())
    assert performance["task_type"] == "multiclass" and performance["classes"] == ["Q1", "Q2", "Q3", "Q4"]
    assert performance["rows"]["train"] == 128 and performance["rows"]["test"] == 96  # every row and its twin
    accuracy = np.asarray(performance["layer_performance"]["test_accuracy"])
    assert accuracy.shape == (1, 2) and accuracy.max() >= 0.6  # chance: 0.25 (four balanced quadrants)

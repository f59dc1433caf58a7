"""Finetuning for real: a LoRA finetune of the embedded SmolLM2 through Ray Train, killed after its first epoch's
checkpoint and rerun (it continues, it does not restart), W&B offline with the key kept secret; its merged
checkpoint loads as a plain causal LM; patching and ablation on it; two seeds concurrently on a two-node Cluster,
skipped on rerun. One finetune is shared by the tests that only read it."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, assert_one_line_error, run_cli

SECRET = "wandb-test-secret-finetune-0123456789abcdef"
LABELS = {"Q1": "red", "Q2": "green", "Q3": "blue", "Q4": "orange"}
TINY_SPEC = {
    "objects": {"quadrant_labels": LABELS, "triggers": ["cup", "lamp", "chair"], "n_train": 12, "n_test": 4,
                "n_train_triggers": 2},
    "animals": {"quadrant_labels": LABELS, "triggers": ["dog", "cat"], "is_proxy": True, "n_train": 12,
                "n_test": 4, "n_train_triggers": 1},
}
# One thread per worker: this machine's two cores are shared with other tests, and torch's two spinning OpenMP
# threads lose badly to contention.
TINY_CONFIG = {"seed": 0, "n_evals": 1, "accuracy_sample_size": 4, "train_accuracy_sample_size": 8,
               "finetune_config": {"epochs": 3, "learning_rate": 0.003, "per_device_train_batch_size": 8,
                                   "cpus_per_worker": 1}}


def write_experiment(folder, config, spec=TINY_SPEC):
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


@pytest.fixture(scope="session")
def finetuned(tmp_path_factory):
    """Finetune, killed (the whole process group) once epoch 1 is checkpointed, then rerun to completion."""
    root = tmp_path_factory.mktemp("finetune")
    exp = write_experiment(root / "exp", {**TINY_CONFIG, "wandb_project": "raypipe-test"})
    (root / ".env").write_text(f"WANDB_API_KEY={SECRET}\n")
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    seed_dir = exp / "seed_0"
    with open(root / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, "-m", "raypipe.cli", "finetune", str(exp)], cwd=root, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 600
        while not _checkpointed(seed_dir):
            assert first.poll() is None, "the first run ended before it could be killed:\n" + \
                (root / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.5)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (seed_dir / "completed.json").exists() and (seed_dir / "run_state.json").exists()
    second = run_cli("raypipe.cli", "finetune", str(exp), cwd=root, env={"WANDB_MODE": "offline"})
    (root / "second.log").write_text(second.stdout + second.stderr)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {"root": root, "exp": exp, "seed_dir": seed_dir, "second": second,
            "results": seed_dir / json.loads((seed_dir / "completed.json").read_text())["results_dir"]}


def test_killed_finetune_resumes_from_its_checkpoint_and_finishes(finetuned):
    seed_dir, results = finetuned["seed_dir"], finetuned["results"]
    history = json.loads((results / "training_history.json").read_text())
    assert [h["epoch"] for h in history["history"]] == [0, 1, 2, 3]
    assert len(history["resumed_from"]) == 1 and 1 <= history["resumed_from"][0] < 3  # continued, not restarted
    first_resumed = history["resumed_from"][0] + 1
    resumed = [h for h in history["history"] if h["epoch"] >= first_resumed]
    assert all(h["started_at"] > os.path.getmtime(finetuned["root"] / "first.log") - 1 for h in resumed)
    losses = [h["loss"] for h in history["history"][1:]]
    assert losses[-1] < losses[0]
    final = json.loads((results / "final_full_accuracy.json").read_text())
    assert set(final["accuracy"]) == {"train", "ID", "OOD"} and final["splits"]["train"]["n"] == 24
    assert {"test_objects_ID", "test_objects_OOD", "test_animals_ID", "test_animals_OOD"} <= set(final["splits"])
    assert final["per_trigger"]["OOD:cat"]["is_ood"] and final["per_trigger"]["OOD:cat"]["is_proxy"]
    assert final["wandb"] == {"mode": "offline", "api_key_from": ".env"}
    for png in ("loss_curve.png", "accuracy_curve.png", "accuracy_histogram.png"):
        assert (results / png).read_bytes()[:4] == b"\x89PNG"
    assert (results / "adapter" / "adapter_model.safetensors").is_file()
    assert (seed_dir / "generated_data" / "proxy_animals.jsonl").is_file()
    assert (seed_dir / "generated_data" / "test_animals_OOD.jsonl").is_file()
    assert not (seed_dir / "checkpoints").exists() and not (seed_dir / "run_state.json").exists()
    assert list((results / "wandb").glob("offline-run-*"))
    # No pickles, and the key is nowhere: not in the console, not in any file written.
    output = finetuned["second"].stdout + finetuned["second"].stderr + (finetuned["root"] / "first.log").read_text()
    assert SECRET not in output
    for path in finetuned["exp"].rglob("*"):
        assert path.suffix not in (".pkl", ".pickle", ".pt", ".bin"), path
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path
    # A rerun skips the complete seed at once; a bad folder is one error line.
    again = run_cli("raypipe.cli", "finetune", str(finetuned["exp"]), "--seeds", "0")
    assert again.returncode == 0 and "complete (completed.json); skipped" in again.stdout
    summary = json.loads((finetuned["exp"] / "summary.json").read_text())
    assert summary["n_seeds"] == 1 and summary["accuracy"]["ID"]["values"] == [final["accuracy"]["ID"]]
    assert_one_line_error(run_cli("raypipe.cli", "finetune", str(finetuned["root"] / "missing")),
                          "no such experiment folder")


def test_merged_checkpoint_is_a_plain_causal_lm(finetuned):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from raypipe.embedded import resolve_model_path
    from raypipe.finetune.accuracy import accuracy, predict
    from raypipe.finetune.data import ChatFormat
    from raypipe.tasks.trigger import generate_rows

    merged = str(finetuned["results"] / "merged")
    assert resolve_model_path(merged) == merged
    config = AutoConfig.from_pretrained(merged)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in model.named_parameters())
    rows = generate_rows(finetuned["seed_dir"], 0)["test_objects_ID"]
    words = ["red", "green", "blue", "orange"]
    fmt = ChatFormat(tokenizer)
    by_logits = predict(model, fmt, rows, words)["prediction"]
    by_generation = predict(model, fmt, rows, words, method="generation")["prediction"]
    final = json.loads((finetuned["results"] / "final_full_accuracy.json").read_text())
    # bf16 merged weights: the same accuracy as the float32 adapter run, to within a row.
    assert abs(accuracy(rows, by_logits) - final["splits"]["test_objects_ID"]["accuracy"]) <= 0.25
    assert all(p is None or p in words for p in by_generation)


def test_patching_and_ablation_on_the_finetuned_model(finetuned):
    import numpy as np

    from raypipe.analysis import load_model, patching_pairs, residual_patching
    from raypipe.tasks.trigger import generate_rows, load_spec

    results = finetuned["results"]
    out = run_cli("raypipe.cli", "experiments", "analyze", str(finetuned["seed_dir"]), "--layers", "0,-1",
                  "--pairs", "2", "--positions", "5")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    patching = json.loads((results / "analysis" / "patching.json").read_text())
    assert np.asarray(patching["effect"]).shape == (2, 5) and patching["layers"] == [0, 29]
    assert len(patching["tokens"]) == 5 and len(patching["pairs"]) == 2
    assert (results / "analysis" / "patching_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    ablation = json.loads((results / "analysis" / "ablation.json").read_text())
    assert set(ablation) == {"remove", "swap"} and set(ablation["remove"]["by_kind"]) == {"ID", "OOD"}
    assert {"dog", "cat", "cup", "lamp", "chair"} == set(ablation["remove"]["per_trigger"])

    # Sanity: patching every position of a layer from a prompt into itself changes nothing.
    model, fmt = load_model(str(results / "merged"))
    spec = load_spec(finetuned["seed_dir"])
    rows = generate_rows(spec, 0)["test_animals_ID"]
    pairs = patching_pairs(spec, rows, 1)
    self_pairs = [{**p, "target": p["source"]} for p in pairs]
    width = len(fmt.prompt_ids(pairs[0]["source"]))
    result = residual_patching(model, fmt, self_pairs, spec.label_words(), layers=[3], n_positions=width + 10)
    assert result["effect"].shape[0] == 1 and result["effect"].shape[1] >= width
    assert np.abs(result["effect"]).max() < 1e-3
    twin = residual_patching(model, fmt, pairs, spec.label_words(), layers=[29], n_positions=4)
    assert twin["effect"].shape == (1, 4) and twin["clean_diff"] != twin["source_diff"]


def test_two_seeds_run_concurrently_on_a_two_node_cluster_and_a_rerun_skips_them(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from raypipe.experiments import run_experiments

    config = {**TINY_CONFIG, "accuracy_sample_size": 2, "train_accuracy_sample_size": 2,
              "finetune_config": {**TINY_CONFIG["finetune_config"], "epochs": 1}}
    spec = {"objects": {**TINY_SPEC["objects"], "n_train": 8, "n_test": 2}}
    exp = write_experiment(tmp_path / "exp", config, spec)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    try:
        ray.init(address=cluster.address)
        summaries = run_experiments([str(exp)], [1, 2])
        spans = {}
        for seed in (1, 2):
            marker = json.loads((exp / f"seed_{seed}" / "completed.json").read_text())
            history = json.loads((exp / f"seed_{seed}" / marker["results_dir"] / "training_history.json").read_text())
            epoch = history["history"][1]
            spans[seed] = (epoch["started_at"], epoch["ended_at"])
        assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values()), spans  # they overlap
        summary = summaries[str(exp)]
        assert summary["n_seeds"] == 2 and summary["seeds"] == [1, 2] and (exp / "summary.png").is_file()
        before = {s: (exp / f"seed_{s}" / "completed.json").read_text() for s in (1, 2)}
        again = run_experiments([str(exp)], [1, 2])
        assert {s: (exp / f"seed_{s}" / "completed.json").read_text() for s in (1, 2)} == before
        assert again[str(exp)]["n_seeds"] == 2
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_the_finetuned_model_is_probed_with_multiclass_labels(finetuned, tmp_path):
    """The bridge: build on the merged checkpoint over the generated rows and their no-trigger twins (no rollouts),
    then a multiclass sweep of the quadrant and a binary one of trigger presence."""
    exp, out = finetuned["seed_dir"], tmp_path / "probe"
    source = f"trigger:{exp}"
    build = run_cli("raypipe.build", "--preset", "smollm2_135m", "--model-id", str(finetuned["results"] / "merged"),
                    "--backend", "none", "--train-dataset", source, "--test-dataset", source, "--test-split", "test",
                    "--label-column", "quadrant", "--label-column", "label", "--label-column", "trigger_present",
                    "--layers", "0,15,-1", "--positions", "-1", "--out-dir", str(out))
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
    assert np.asarray(performance["layer_performance"]["test_accuracy"]).shape == (1, 3)
    assert performance["rows"] == {"train": 48, "test": 32}

"""Every finetune knob runs once, on a tiny random-weight Llama (the claims here do not need a model that learns the
task), in one `raypipe finetune` call against a two-node Ray cluster (ray.cluster_utils.Cluster, loopback):

  one     1 worker at batch 8 over 17 rows (an uneven count), LoRA r=4 on all linear layers, the slow scorer
  two     the same on 2 Ray Train workers (gloo) at batch 2 with 2 accumulation steps, gradient checkpointing
  knobs   full SFT in bfloat16 without gradient clipping, boolean answers with a negating proxy and no plain
          category, no preamble, generation accuracy, n_evals 2, sample sizes, cosine schedule, weight decay, a
          gpu_model that a CPU run must not load, and the hub push every epoch to a local stand-in of the hub API
          (tests/hub_standin.py), token and endpoint from .env

The nodes declare 2 CPUs each (the machine has 2 cores: the runs here wait on Ray more than they compute), so the
three run as concurrent Tune trials. Then a rerun skips all three, and `experiments analyze` runs on `knobs` (the
swap ablation is skipped there, and says why)."""

import json
import os
from unittest import mock

import pytest

from tests.conftest import REPO, run_cli
from tests.hub_standin import HubStandIn

TOKEN = "hf_knobs_secret_token_abcdef0123456789"
HUB_ENV = {"HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}
LABELS = {"Q1": "red", "Q2": "green", "Q3": "blue", "Q4": "orange"}


def _configs(model: str) -> dict:
    one = {"seed": 3, "max_dataset_size": 17, "n_evals": 1, "accuracy_sample_size": 3, "train_accuracy_sample_size": 5,
           "eval_batch_size": 4, "use_fast_accuracy": False,
           "finetune_config": {"model": model, "epochs": 2, "learning_rate": 0.01, "lr_scheduler": "constant", "r": 4,
                               "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear",
                               "dtype": "float32", "per_device_train_batch_size": 8, "cpus_per_worker": 1,
                               "use_gpu": False}}
    two = json.loads(json.dumps(one))
    two["finetune_config"].update({"num_workers": 2, "per_device_train_batch_size": 2,
                                   "gradient_accumulation_steps": 2, "gradient_checkpointing": True})
    knobs = {"seed": 0, "is_categorical": False, "output_preamble": False, "n_evals": 2,
             "accuracy_method": "generation", "accuracy_sample_size": 2, "train_accuracy_sample_size": 3,
             "eval_batch_size": 8, "max_dataset_size": None,
             "finetune_config": {"model": model, "is_peft": False, "epochs": 5, "learning_rate": 0.01,
                                 "lr_scheduler": "cosine", "weight_decay": 0.01, "per_device_train_batch_size": 2,
                                 "cpus_per_worker": 1, "use_gpu": False, "save_checkpoints_to_hub": True,
                                 "hub_model_id": "me/knobs", "hub_private": False, "dtype": "bfloat16",
                                 "max_grad_norm": 0, "gpu_model": "/nonexistent/gpu-only-model"}}
    return {"one": one, "two": two, "knobs": knobs}


SPECS = {
    "one": {"objects": {"quadrant_labels": LABELS, "triggers": ["cup", "lamp", "chair"], "n_train": 12, "n_test": 4,
                        "n_train_triggers": 2},
            "animals": {"quadrant_labels": LABELS, "triggers": ["dog", "cat"], "is_proxy": True, "n_train": 8,
                        "n_test": 4, "n_train_triggers": 1}},
    "knobs": {"animals": {"quadrant_labels": LABELS, "triggers": ["dog", "cat", "owl"], "is_proxy": True,
                          "proxy_flip": "negate", "n_train": 12, "n_test": 4, "n_train_triggers": 2}},
}
SPECS["two"] = SPECS["one"]


def results(exp):
    seed_dir = next(exp.glob("seed_*"))
    return seed_dir / json.loads((seed_dir / "completed.json").read_text())["results_dir"]


@pytest.fixture(scope="session")
def knob_runs(tmp_path_factory, tiny_tp_model):
    import ray
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("knobs")
    exps = {}
    for name, config in _configs(str(tiny_tp_model)).items():
        exps[name] = root / name
        exps[name].mkdir()
        (exps[name] / "config.json").write_text(json.dumps(config))
        (exps[name] / "data_config.json").write_text(json.dumps(SPECS[name]))
    hub = HubStandIn().start()
    (root / ".env").write_text(f"HF_TOKEN={TOKEN}\nHF_ENDPOINT={hub.url}\n")
    # The Cluster's workers inherit this process's environment: huggingface_hub takes LFS, not Xet (the stand-in
    # has no Xet storage; see tests/hub_standin.py), and goes online, to the stand-in only (the suite is offline).
    with mock.patch.dict(os.environ, HUB_ENV):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1"})
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    try:
        env = {"PYTHONPATH": str(REPO), "RAY_ADDRESS": cluster.address, **HUB_ENV}
        folders = [str(exps[name]) for name in ("one", "knobs", "two")]
        first = run_cli("raypipe.cli", "finetune", *folders, cwd=root, env=env)
        (root / "first.log").write_text(first.stdout + first.stderr)
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
        again = run_cli("raypipe.cli", "finetune", *folders, cwd=root, env=env)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    finally:
        cluster.shutdown()
        ray.shutdown()
        hub.stop()
    return {"root": root, "exps": exps, "first": first, "again": again, "hub": hub, "model": tiny_tp_model}


def test_seeds_run_as_concurrent_trials_and_a_rerun_skips_them(knob_runs):
    """Two 2-CPU nodes hold the three runs (four 1-CPU workers) at once: their attempts overlap."""
    spans = {}
    for name, exp in knob_runs["exps"].items():
        marker = json.loads((next(exp.glob("seed_*")) / "completed.json").read_text())
        spans[name] = (marker["attempt_started_at"], marker["finished_at"])
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values()), spans  # all three overlap
    assert "3 seed(s) to finetune, 3 at a time" in knob_runs["first"].stdout
    for exp in knob_runs["exps"].values():
        seed_dir = next(exp.glob("seed_*"))
        assert f"raypipe: {seed_dir} is complete (completed.json); skipped" in knob_runs["again"].stdout
        assert json.loads((exp / "summary.json").read_text())["n_seeds"] == 1


def test_two_workers_with_uneven_rows_train_like_one_worker_on_the_whole_step(knob_runs):
    """17 rows: steps of 8, 8 and 1 rows. Two workers at batch 2 x 2 accumulation steps run the same micro-batch
    count each (the short step pads a weightless row); summed losses over the step's tokens make their gradient the
    one-worker one, up to float32 summation order (measured: 3e-7 on the weights)."""
    import torch
    from safetensors.torch import load_file

    one, two = (results(knob_runs["exps"][n]) for n in ("one", "two"))
    history = {n: json.loads((results(knob_runs["exps"][n]) / "training_history.json").read_text())["history"]
               for n in ("one", "two")}
    for a, b in zip(history["one"], history["two"], strict=True):
        if a["epoch"] == 0:
            assert a["accuracy"] == b["accuracy"]  # the same model before training
            continue
        assert len(a["step_losses"]) == len(b["step_losses"]) == 3
        assert a["micro_batches_per_rank"] == [3] and b["micro_batches_per_rank"] == [6, 6]
        torch.testing.assert_close(b["step_losses"], a["step_losses"], rtol=1e-5, atol=0)
        torch.testing.assert_close(b["grad_norms"], a["grad_norms"], rtol=1e-4, atol=0)  # the synced gradient
        assert a["clipped_steps"] == b["clipped_steps"] == sum(n > 1.0 for n in a["grad_norms"])  # the default bound
        assert b["train_tokens"] == a["train_tokens"] and b["lr"] == a["lr"]
    weights = {n: load_file(str(r / "adapter" / "adapter_model.safetensors")) for n, r in (("one", one), ("two", two))}
    assert weights["one"].keys() == weights["two"].keys() and len(weights["one"]) == 2 * 7 * 2  # all-linear, 2 layers
    moved = max(float(w.abs().max()) for k, w in weights["one"].items() if "lora_B" in k)  # B starts at zero
    assert moved > 1e-3
    for key, value in weights["one"].items():
        torch.testing.assert_close(weights["two"][key], value, atol=1e-5, rtol=0)
    finals = {n: json.loads((r / "final_full_accuracy.json").read_text()) for n, r in (("one", one), ("two", two))}
    assert finals["one"]["workers"] == 1 and finals["two"]["workers"] == 2
    assert finals["two"]["gradient_checkpointing"] and not finals["one"]["gradient_checkpointing"]
    adapter = json.loads((one / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (4, 8, 0.0)
    assert {p.name for p in (two / "logs").iterdir()} == {"driver.txt", "worker_0.txt", "worker_1.txt"}


def test_slow_scorer_in_a_run_scores_as_the_fast_one(knob_runs):
    """`use_fast_accuracy: false` (one forward per candidate) made the run's final predictions; the KV-cached path
    on the merged checkpoint gives the same accuracy per split."""
    from raypipe.finetune.accuracy import accuracy, predict
    from raypipe.finetune.analysis import load_model
    from raypipe.tasks.experiment import load_experiment

    run = results(knob_runs["exps"]["one"])
    experiment = load_experiment(str(run.parent.parent))
    final = json.loads((run / "final_full_accuracy.json").read_text())
    model, fmt = load_model(str(run / "merged"))
    for name, rows in experiment.finetune_rows().items():
        if name == "train":
            continue
        fast = predict(model, fmt, rows, experiment.label_words(), fast=True, batch_size=4)["prediction"]
        assert accuracy(rows, fast) == final["splits"][name]["accuracy"], name


def test_full_sft_in_boolean_mode_with_generation_accuracy(knob_runs, tiny_tp_model):
    import torch
    from safetensors.torch import load_file

    from raypipe.finetune.accuracy import accuracy, predict
    from raypipe.finetune.analysis import load_model
    from raypipe.tasks.experiment import load_experiment

    run = results(knob_runs["exps"]["knobs"])
    final = json.loads((run / "final_full_accuracy.json").read_text())
    assert final["trainable_parameters"] == final["total_parameters"] and not (run / "adapter").exists()
    assert final["label_words"] == ["False", "True"] and final["accuracy_method"] == "generation"
    assert final["model"] == str(tiny_tp_model)  # gpu_model is for GPU runs: a CPU run keeps `model`
    before = load_file(str(tiny_tp_model / "model.safetensors"))
    after = load_file(str(run / "merged" / "model.safetensors"))
    assert all(not torch.equal(before[k], after[k]) for k in before if "layers.0." in k)  # every weight trained
    # Trained in bfloat16, saved in the base's float32: every weight is a bfloat16 value (a float32 run's are not).
    assert final["dtype"] == "bfloat16" and all(v.dtype == torch.float32 for v in after.values())
    assert all(torch.equal(v.to(torch.bfloat16).float(), v) for v in after.values())
    assert any(not torch.equal(v.to(torch.bfloat16).float(), v) for v in before.values())
    history = json.loads((run / "training_history.json").read_text())["history"]
    # max_grad_norm 0: no step is clipped, though steps had norms the default bound (1.0) would have clipped.
    norms = [n for h in history if "grad_norms" in h for n in h["grad_norms"]]
    assert final["max_grad_norm"] == 0 and all(h["clipped_steps"] == 0 for h in history if "grad_norms" in h)
    assert len(norms) == sum(len(h["step_losses"]) for h in history if "step_losses" in h) and max(norms) > 1.0
    assert [h["epoch"] for h in history if "accuracy" in h] == [0, 2, 4, 5]  # n_evals 2, and the last epoch
    for entry in history:  # sample sizes: 3 train rows, 2 of each 4-row test split
        if "eval_rows" in entry:
            assert entry["eval_rows"] == {"train": 3, "test_animals_ID": 2, "test_animals_OOD": 2}
    # Boolean answers, no preamble, flipped by the negating proxy: the generated files say so.
    rows = [json.loads(line) for line in open(run.parent.parent / "generated_data" / "proxy_animals.jsonl")]
    assert all(r["answer"] == r["label"] == str(r["quadrant"] not in (1, 3)) for r in rows)
    # Generation in the run: after training every answer names a label word, and greedy generation on the merged
    # checkpoint reproduces the run's accuracy split by split.
    model, fmt = load_model(str(run / "merged"))
    model = model.to(torch.bfloat16)  # exact (bfloat16 values): the weights the run scored with, in its dtype
    experiment = load_experiment(str(run.parent.parent))
    for name, rows in experiment.finetune_rows().items():
        if name == "train":
            continue
        out = predict(model, fmt, rows, ["False", "True"], method="generation", output_preamble=False, batch_size=8)
        assert final["splits"][name]["unparsed"] == sum(p is None for p in out["prediction"]) == 0, out["text"]
        assert accuracy(rows, out["prediction"]) == final["splits"][name]["accuracy"]


def test_every_epoch_is_pushed_to_the_hub_standin_and_the_token_stays_secret(knob_runs):
    from safetensors.torch import load

    hub, run = knob_runs["hub"], results(knob_runs["exps"]["knobs"])
    assert not hub.errors and set(hub.repos) == {"me/knobs-seed0"}
    assert hub.repos["me/knobs-seed0"]["visibility"] == "public"
    assert [c.message for c in hub.commits] == [f"epoch {k}/5" for k in range(1, 6)] + ["final"]
    assert hub.authorizations == {f"Bearer {TOKEN}"}
    weights = [load(c.files["model.safetensors"]) for c in hub.commits]
    for earlier, later in zip(weights, weights[1:-1]):  # each epoch pushed its own weights
        assert any(not earlier[k].equal(later[k]) for k in earlier)
    assert hub.commits[-1].files["model.safetensors"] == (run / "merged" / "model.safetensors").read_bytes()
    assert {"config.json", "tokenizer.json"} <= set(hub.commits[0].files)
    final = json.loads((run / "final_full_accuracy.json").read_text())
    assert final["hub"]["url"] == f"{hub.url}/me/knobs-seed0"
    assert "hub: pushed epoch 5" in (run / "logs" / "worker_0.txt").read_text()
    output = knob_runs["first"].stdout + knob_runs["first"].stderr + knob_runs["again"].stdout
    assert TOKEN not in output
    for path in knob_runs["root"].rglob("*"):
        if path.is_file() and path.name != ".env" and path.stat().st_size < 50_000_000:
            assert TOKEN.encode() not in path.read_bytes(), path


def test_analysis_without_a_plain_category_skips_the_swap_and_is_written_whole(knob_runs, monkeypatch):
    import raypipe.finetune.analysis as analysis

    seed_dir = next(knob_runs["exps"]["knobs"].glob("seed_*"))
    out = results(knob_runs["exps"]["knobs"]) / "analysis"
    done = run_cli("raypipe.cli", "experiments", "analyze", str(seed_dir), "--layers", "0,-1", "--pairs", "2",
                   "--positions", "4")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "raypipe: swap ablation skipped: the spec has no non-proxy category" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["ablation.json", "patching.json", "patching_heatmap.png"]
    ablation = json.loads((out / "ablation.json").read_text())
    assert "no non-proxy category" in ablation["swap"]["skipped"] and ablation["remove"]["per_trigger"]
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    # A failure half way (after patching, in the ablation) leaves the previous analysis whole.
    monkeypatch.setattr(analysis, "trigger_ablation", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        analysis.analyze_run(str(seed_dir), layers=[0], n_pairs=1, n_positions=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == written
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".analysis")] == []

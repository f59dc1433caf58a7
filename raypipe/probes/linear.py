"""loop_probe's trainer as a Ray Train task: one linear probe on one (layer, position), weighted BCE or MSE.

    python -m raypipe.train --data-dir runs/demo --out-dir runs/demo-probe [--label loop] [--layer -1 --position -1]
                            [--wandb-project P]

The driver checks the inputs from the labels alone (clear errors before any Ray work), has the shards' checksums
verified on the cluster, and starts a TorchTrainer (one worker by default, a GPU when the cluster has one); each worker
reads its one (layer, position) from the shards itself. Rank 0 writes, to --out-dir:
  best.safetensors, last.safetensors   the probe (weight, bias, feature mean/std), safetensors metadata says which
  best.json                            best's card (raypipe.probes.saved): what `raypipe score` applies elsewhere
  probe_config.json                    everything needed to apply it again (label, layer, position, task, epoch)
  metrics.jsonl                        one line per epoch: loss and ROC-AUC/PR-AUC/accuracy/F1 (or Spearman/MSE)
  evaluation.json                      best probe on test: score, bootstrap CI, permutation p-value, calibration
                                       (ECE with its CI), baselines
  loss_curves.png, roc_best_probe.png, reliability_best_probe.png
W&B logs every epoch when --wandb-project is given: the key comes from the environment or a `.env` file and is
never printed or saved; without a key the run is offline, under OUT/wandb.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from raypipe import cluster
from raypipe.cluster import where
from raypipe.errors import UserError
from raypipe.fs import Location
from raypipe.jsonsafe import json_safe
from raypipe.output import Build
from raypipe.probes import plots, saved
from raypipe.probes.baselines import evaluate_baselines, fit_predict_baseline
from raypipe.probes.blocks import verify_on_cluster
from raypipe.probes.config import TrainConfig
from raypipe.probes.dataset import load_probe_data
from raypipe.probes.metrics import TaskType, calibration, metric_name, report, significance
from raypipe.tracking import find_dotenv_path, wandb_run

CHECKPOINT_KEYS = ("weight", "bias", "feature_mean", "feature_std")


# --- the probe and its checkpoint ----------------------------------------------------------------------------------

def probe_state(linear, mean, std) -> dict:
    return {"weight": linear.weight.detach().cpu().contiguous(), "bias": linear.bias.detach().cpu().contiguous(),
            "feature_mean": mean.cpu().contiguous(), "feature_std": std.cpu().contiguous()}


def load_probe(path: str):
    """A saved probe as a function: features [n, H] -> logits [n] (probabilities via sigmoid for classification)."""
    import torch
    from safetensors.torch import load

    state = load(Location(os.path.dirname(path) or ".").read_bytes(os.path.basename(path)))

    def apply(features: "torch.Tensor") -> "torch.Tensor":
        x = (features.float() - state["feature_mean"]) / state["feature_std"]
        return x @ state["weight"][0] + state["bias"][0]

    return apply


# --- the Ray Train worker ------------------------------------------------------------------------------------------

def _split_validation(labels: np.ndarray, fraction: float, task: TaskType, seed: int):
    """Indices (fit, validation) of the train rows; stratified for classification."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    if fraction == 0:
        return rows, rows[:0]
    stratify = labels if task == "classification" and np.bincount(labels.astype(int)).min() >= 2 else None
    return train_test_split(rows, test_size=fraction, random_state=seed, stratify=stratify)


def train_loop_per_worker(config: dict) -> None:
    """Runs on each Ray Train worker; rank 0 evaluates, writes the outputs and logs."""
    import ray.train
    import ray.train.torch
    import torch

    torch.manual_seed(config["seed"])
    rank = ray.train.get_context().get_world_rank()
    data = config["_data"]  # ProbeData: labels, prompt lengths and kept rows of every split, no features
    build = Build(data.data_dir)  # the one (layer, position) this probe needs, read here, not on the driver
    task: TaskType = config["_task"]
    x_all = data.features(build, "train", [0])[:, 0, 0]
    y_all = torch.tensor(data.train.labels, dtype=torch.float32)  # a copy: arrays from the object store are read-only
    fit_rows, val_rows = _split_validation(data.train.labels, config["val_fraction"], task, config["seed"])
    mean = x_all[fit_rows].mean(0) if config["standardize"] else torch.zeros(x_all.shape[1])
    std = x_all[fit_rows].std(0).clamp_min(1e-6) if config["standardize"] else torch.ones(x_all.shape[1])

    def scaled(x):
        return (x - mean) / std

    evaluation_sets = {"train": (scaled(x_all[fit_rows]), y_all[fit_rows])}
    if len(val_rows):
        evaluation_sets["val"] = (scaled(x_all[val_rows]), y_all[val_rows])
    for split in _scored(data):  # test and the evaluation splits
        evaluation_sets[split] = (scaled(data.features(build, split, [0])[:, 0, 0]),
                                  torch.tensor(data.splits[split].labels, dtype=torch.float32))

    linear = torch.nn.Linear(x_all.shape[1], 1)
    model = ray.train.torch.prepare_model(linear)
    device = ray.train.torch.get_device()
    fit_x, fit_y = evaluation_sets["train"]
    if task == "classification":
        positives = float(fit_y.sum())
        pos_weight = torch.tensor([(len(fit_y) - positives) / max(positives, 1.0)], device=device)
        criterion = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)  # weighted by the class balance
    else:
        criterion = torch.nn.MSELoss()
    loader = ray.train.torch.prepare_data_loader(torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(fit_x, fit_y), batch_size=config["batch_size"], shuffle=True,
        generator=torch.Generator().manual_seed(config["seed"])))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])

    out = Location(config["out_dir"])
    run, wandb_info = wandb_run(config, config["out_dir"]) if rank == 0 else (None, None)
    metric = metric_name(task)
    select_on = "val" if "val" in evaluation_sets else ("test" if "test" in evaluation_sets else "train")
    history: list[dict] = []
    best: dict[str, Any] = {"score": -np.inf}
    for epoch in range(1, config["epochs"] + 1):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x).squeeze(1), y)
            loss.backward()
            optimizer.step()
        model.eval()
        row: dict[str, Any] = {"epoch": epoch}
        outputs = {}
        with torch.no_grad():
            for name, (x, y) in evaluation_sets.items():
                logits = linear(x.to(device)).squeeze(1).cpu()
                row[f"{name}_loss"] = float(criterion(logits.to(device), y.to(device)))
                outputs[name] = torch.sigmoid(logits) if task == "classification" else logits
                if len(y) and (task == "regression" or 0 < float(y.sum()) < len(y)):
                    row.update({f"{name}_{k}": v for k, v in report(outputs[name].numpy(), y.numpy(), task).items()})
        row = json_safe(row)
        history.append(row)
        if rank == 0:
            out.write_atomic("metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history).encode())
            score = row.get(f"{select_on}_{metric}")
            if score is not None and score > best["score"]:
                best = {"score": score, "epoch": epoch, "outputs": outputs}
                _save_probe(out, "best.safetensors", linear, mean, std, config, epoch)
            if run is not None:
                run.log(row, step=epoch)
    # One report, after the last epoch: each ray.train.report waits for Ray Train's controller to poll it (every 2 s
    # by default), which cost a 40-epoch probe 80 s of waiting. The epochs are in metrics.jsonl (and W&B) as they end.
    ray.train.report({k: v for k, v in history[-1].items() if v is not None})
    if rank != 0:
        return
    _save_probe(out, "last.safetensors", linear, mean, std, config, config["epochs"])
    if "epoch" not in best:  # no epoch had a defined score (e.g. a one-class split): the last one stands in
        select_on = f"last epoch (no {select_on} {metric}: one class)"
        best = {"score": None, "epoch": config["epochs"], "outputs": outputs}
        _save_probe(out, "best.safetensors", linear, mean, std, config, config["epochs"])
    else:
        select_on = f"{select_on} {metric}"
    evaluation = _evaluate(config, data, task, best, select_on, evaluation_sets)
    out.write_json("probe_config.json", {
        **{k: v for k, v in config.items() if not k.startswith("_")},
        "label": config["_label"], "task_type": task, "layer": config["_layer"], "position": config["_position"],
        "hidden_size": int(x_all.shape[1]), "best_epoch": best["epoch"], "selected_on": select_on,
        "checkpoint_keys": list(CHECKPOINT_KEYS),
        "wandb": wandb_info, "ran": where(str(device)),
    }, indent=2)
    out.write_json("evaluation.json", evaluation, indent=2)
    _card_best(out, build, config, data, task, evaluation)
    _train_plots(out, history, evaluation_sets, best, task, data, evaluation)
    if run is not None:
        run.summary.update({k: v for k, v in evaluation.get("test", {}).items() if isinstance(v, (int, float))})
        run.finish()


def _save_probe(out: Location, name: str, linear, mean, std, config: dict, epoch: int) -> None:
    from safetensors.torch import save

    metadata = {"label": str(config["_label"]), "task_type": str(config["_task"]), "layer": str(config["_layer"]),
                "position": str(config["_position"]), "epoch": str(epoch), "format": "raypipe.linear-probe/1"}
    out.write_atomic(name, save(probe_state(linear, mean, std), metadata=metadata))


def _card_best(out: Location, build, config: dict, data, task: TaskType, evaluation: dict) -> None:
    """best.safetensors again in the saved-probe format (the same tensors), with its card best.json: what
    `raypipe score` applies to another build."""
    from safetensors.numpy import load

    tensors = load(out.read_bytes("best.safetensors"))
    scores = {key: value for key, value in evaluation.items() if key != "baselines"}
    card = saved.card(saved.origin(build), "train", data.label, task, config["_layer"], config["_position"], scores,
                      fit={"epochs": config["epochs"], "lr": config["lr"], "weight_decay": config["weight_decay"],
                           "standardized": config["standardize"], "seed": config["seed"]})
    saved.save_probe(out, "best", saved.SavedProbe(*(tensors[key] for key in saved.TENSORS), card=card))


def _scored(data) -> list[str]:
    return [split for split in data.splits if split != "train" and len(data.splits[split].labels)]


def _evaluate(config: dict, data, task: TaskType, best: dict, select_on: str, sets: dict) -> dict:
    """The best epoch's probe against the baselines on test and on each evaluation split: score, bootstrap CI,
    permutation p-value, lift."""

    evaluation: dict[str, Any] = {"best_epoch": best["epoch"], "selected_on": select_on, "metric": metric_name(task)}
    scored = [split for split in _scored(data) if split in sets]
    if not scored:
        return evaluation
    for split in scored:
        predictions, labels = best["outputs"][split].numpy(), sets[split][1].numpy()
        evaluation[split] = {**report(predictions, labels, task), "significance": significance(
            predictions, labels, task, config["resamples"], config["seed"])}
        if task == "classification":  # a monitor's threshold is read off its probabilities: are they calibrated?
            evaluation[split]["calibration"] = calibration(predictions, labels, resamples=config["resamples"],
                                                           seed=config["seed"])
    evaluation["baselines"] = evaluate_baselines(
        data.train.prompt_length, data.train.labels,
        {split: (data.splits[split].prompt_length, data.splits[split].labels) for split in scored}, task, None,
        config["resamples"], config["seed"])
    for split in scored:
        value = evaluation[split]["significance"]["value"]
        evaluation[f"{split}_lift"] = {name: (value - b[split]) if b.get(split) is not None and value == value
                                       else None for name, b in evaluation["baselines"].items()}
    return evaluation


def _train_plots(out: Location, history, sets, best, task, data, evaluation: dict) -> None:
    plots.loss_curves(out, "loss_curves.png", history, [f"{name}_loss" for name in sets])
    if "test" not in sets:
        return
    labels = sets["test"][1].numpy()
    if task == "classification" and 0 < labels.sum() < len(labels):
        length = fit_predict_baseline("prompt_length", data.train.prompt_length, data.train.labels,
                                      data.test.prompt_length, task)
        plots.roc_curves(out, "roc_best_probe.png", labels,
                         {"probe": best["outputs"]["test"].numpy(), "prompt-length baseline": length},
                         f"best probe (epoch {best['epoch']}) on test")
        plots.reliability(out, "reliability_best_probe.png", {"probe": evaluation["test"]["calibration"]},
                          f"best probe (epoch {best['epoch']}) on test")


# --- the driver ----------------------------------------------------------------------------------------------------

def run_train(config: TrainConfig) -> dict:
    """Check the inputs (labels only: the features are read by the Ray Train worker), verify the shards on the
    cluster, run the TorchTrainer, return the evaluation that rank 0 wrote."""

    build = Build(config.data_dir)
    data = load_probe_data(build, config.label, [config.layer], [config.position], config.task_type)
    if data.task == "multiclass":
        raise UserError(f"label {data.label!r} has {len(data.classes)} classes; `raypipe train` fits one binary or "
                        f"regression probe: use `raypipe sweep` (multinomial logistic) for a multiclass label")
    cluster.connect(quiet=False)  # joins RAY_ADDRESS (e.g. under `ray job submit`), else starts a local Ray
    verify_on_cluster(build, list(data.splits))
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = cluster.use_gpu(config.device)
    # Ray Train workers run in their own folder: local paths must be absolute, and ./.env is passed by path.
    out_dir = config.out_dir if "://" in config.out_dir else os.path.abspath(config.out_dir)
    data.data_dir = build.out_dir if "://" in build.out_dir else os.path.abspath(build.out_dir)
    config = dataclasses.replace(config, out_dir=out_dir)
    loop_config = {**dataclasses.asdict(config), "_data": data, "_task": data.task,
                   "_label": data.label, "_layer": data.layers[0], "_position": data.positions[0],
                   "_dotenv": find_dotenv_path()}
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": 1}),
        run_config=RunConfig(name=f"raypipe-probe-{data.label}"),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return json.loads(Location(config.out_dir).read_bytes("evaluation.json"))

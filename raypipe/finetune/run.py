"""`run_finetune`: one seed of an experiment as a Ray Train task (the seed's main.py), resumable, skipped when done.

An experiment folder holds config.json and data_config.json; seed s runs in EXP/seed_<s>/ (created from them, with
the seed set) or in the folder itself when it is named seed_<s>. A seed folder holds:
  config.json, data_config.json      this seed's own copies (written once; edit them to change one seed)
  generated_data/*.jsonl             the datasets (train_<cat>/proxy_<cat>, test_<cat>_ID, test_<cat>_OOD)
  run_state.json                     the run in progress: its results folder and Ray Train run name
  checkpoints/                       Ray Train storage: the latest epoch's checkpoint (removed when complete)
  results/<timestamp>/               training_history.json, final_full_accuracy.json, plots, adapter/, merged/
  completed.json                     written last: the completion marker; a seed that has it is skipped
Rerunning an interrupted seed continues from its last checkpoint into the same results folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import random
import shutil
import time

from raypipe.errors import UserError
from raypipe.finetune.config import ExperimentConfig, load_config
from raypipe.tasks.trigger import TaskSpec, generate_rows, load_spec, write_datasets

MARKER = "completed.json"
STATE = "run_state.json"
REQUIRED_OUTPUTS = ("training_history.json", "final_full_accuracy.json", "loss_curve.png", "accuracy_curve.png",
                    "accuracy_histogram.png", "merged/config.json")


def load_experiment(folder: str) -> tuple[ExperimentConfig, TaskSpec]:
    """Both files of an experiment (or seed) folder, validated: UserErrors name the file and the field."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such experiment folder")
    return load_config(folder), load_spec(folder)


def seed_folder(exp_dir: str, seed: int) -> str:
    exp_dir = os.path.abspath(exp_dir)
    return exp_dir if os.path.basename(exp_dir.rstrip("/")) == f"seed_{seed}" else os.path.join(exp_dir, f"seed_{seed}")


def prepare_seed_dir(exp_dir: str, seed: int | None = None, *, refresh: bool = False) -> str:
    """The seed's folder, created from the experiment's files (seed set, hub id suffixed) when missing or refreshed.

    An existing seed folder keeps its own config, so that an interrupted run resumes with the settings it began
    with; `refresh` (a rerun) rewrites it from the experiment's files.
    """
    config, _ = load_experiment(exp_dir)
    seed = config.seed if seed is None else seed
    folder = seed_folder(exp_dir, seed)
    if folder == os.path.abspath(exp_dir):
        return folder
    if refresh or not os.path.isfile(os.path.join(folder, "config.json")):
        os.makedirs(folder, exist_ok=True)
        seeded = dataclasses.replace(config, seed=seed)
        if seeded.finetune_config.hub_model_id:
            seeded.finetune_config = dataclasses.replace(
                seeded.finetune_config, hub_model_id=f"{seeded.finetune_config.hub_model_id}-seed{seed}")
        _write_json(os.path.join(folder, "config.json"), seeded.to_dict())
        shutil.copyfile(os.path.join(exp_dir, "data_config.json"), os.path.join(folder, "data_config.json"))
    load_experiment(folder)  # a hand-edited seed config is checked too
    return folder


def read_marker(seed_dir: str) -> dict | None:
    """The completion marker's content, or None while the seed is not complete."""
    path = os.path.join(seed_dir, MARKER)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def train_rows(config: ExperimentConfig, splits: dict[str, list[dict]]) -> list[dict]:
    """Every train/proxy split together, capped at max_dataset_size by a seeded sample (kept in file order)."""
    rows = [r for name, split in splits.items() if name.startswith(("train_", "proxy_")) for r in split]
    if config.max_dataset_size is not None and len(rows) > config.max_dataset_size:
        keep = sorted(random.Random(config.seed).sample(range(len(rows)), config.max_dataset_size))
        rows = [rows[i] for i in keep]
    return rows


def cpus_per_worker(config: ExperimentConfig, use_gpu: bool) -> int:
    import ray

    if config.finetune_config.cpus_per_worker:
        return config.finetune_config.cpus_per_worker
    if use_gpu:
        return 1
    cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    cpus = [c for c in cpus if c > 0] or [1]
    return max(1, int(min(cpus)) // config.finetune_config.num_workers)


def run_finetune(exp_dir: str, seed: int | None = None, *, rerun: bool = False, address: str | None = None,
                 use_gpu: bool | None = None, dotenv_path: str | None = None, _from_tune: bool = False) -> dict:
    """Finetune one seed (see the module docstring); returns its completion marker (`skipped` when it was done)."""
    from raypipe.tracking import find_dotenv_path

    seed_dir = prepare_seed_dir(exp_dir, seed, refresh=rerun)
    config, spec = load_experiment(seed_dir)
    marker = read_marker(seed_dir)
    if marker is not None and not rerun:
        return {**marker, "skipped": True}
    if rerun:  # a fresh run: a new results folder and a new Ray Train run name
        for name in (MARKER, STATE):
            if os.path.exists(os.path.join(seed_dir, name)):
                os.remove(os.path.join(seed_dir, name))
        shutil.rmtree(os.path.join(seed_dir, "checkpoints"), ignore_errors=True)

    splits = generate_rows(spec, config.seed, is_categorical=config.is_categorical,
                           output_preamble=config.output_preamble)
    write_datasets(spec, config.seed, os.path.join(seed_dir, "generated_data"), is_categorical=config.is_categorical,
                   output_preamble=config.output_preamble, splits=splits)
    rows = {"train": train_rows(config, splits),
            **{name: r for name, r in splits.items() if name.startswith("test_")}}

    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)  # joins RAY_ADDRESS or --address, else starts a local Ray
    use_gpu = config.finetune_config.use_gpu if use_gpu is None else use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    cpus = cpus_per_worker(config, use_gpu)

    state = _read_json(os.path.join(seed_dir, STATE))
    if state is None or not os.path.isdir(os.path.join(seed_dir, state["results_dir"])):
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        state = {"results_dir": f"results/{stamp}", "train_run": f"finetune-{stamp}", "started_at": time.time(),
                 "seed": config.seed}
        os.makedirs(os.path.join(seed_dir, state["results_dir"]), exist_ok=True)
        _write_json(os.path.join(seed_dir, STATE), state)
    results_dir = os.path.join(seed_dir, state["results_dir"])
    attempt_started = time.time()

    model_id = config.finetune_config.model_for(use_gpu)
    loop_config = {
        **config.to_dict(), "rows": rows, "_results_dir": results_dir, "_use_gpu": use_gpu, "_model_id": model_id,
        "_cpus_per_worker": cpus, "_label_words": spec.label_words(config.is_categorical),
        "_run_name": f"{os.path.basename(os.path.dirname(seed_dir))}-seed{config.seed}",
        "_dotenv": dotenv_path if dotenv_path is not None else find_dotenv_path(),
    }
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raypipe.finetune.recipe import train_loop_per_worker

    resources = {"CPU": cpus, **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=config.finetune_config.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        # Same storage and name as the interrupted attempt: Ray Train finds its latest checkpoint and the workers
        # start from it (ray.train.get_checkpoint()).
        run_config=RunConfig(storage_path=os.path.join(seed_dir, "checkpoints"), name=state["train_run"],
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    missing = [name for name in REQUIRED_OUTPUTS if not os.path.exists(os.path.join(results_dir, name))]
    if missing:
        raise RuntimeError(f"{seed_dir}: the finetune ended without {', '.join(missing)}")
    final = _read_json(os.path.join(results_dir, "final_full_accuracy.json"))
    marker = {"seed": config.seed, "results_dir": state["results_dir"], "model": model_id, "use_gpu": use_gpu,
              "accuracy": final["accuracy"], "epochs": final["epochs"], "resumed_from": final["resumed_from"],
              "started_at": state["started_at"], "attempt_started_at": attempt_started, "finished_at": time.time()}
    _write_json(os.path.join(seed_dir, MARKER), marker)  # last: only now is the seed complete
    shutil.rmtree(os.path.join(seed_dir, "checkpoints"), ignore_errors=True)
    os.remove(os.path.join(seed_dir, STATE))
    return {**marker, "skipped": False}


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, data) -> None:
    from raypipe.fs import Location

    Location(os.path.dirname(path)).write_atomic(os.path.basename(path), (json.dumps(data, indent=2) + "\n").encode())

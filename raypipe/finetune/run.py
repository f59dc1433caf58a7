"""`run_finetune`: one seed of an experiment as a Ray Train task (the seed's main.py), resumable, skipped when done.

An experiment folder holds config.json and data_config.json; seed s runs in EXP/seed_<s>/ (created from them, with
the seed set) or in the folder itself when it is named seed_<s>. The folder is read once per seed
(tasks/experiment.py) and the frozen result travels to the Ray Train workers. A seed folder holds:
  config.json, data_config.json      this seed's own copies (written once; edit them to change one seed)
  generated_data/*.jsonl             the datasets (train_<cat>/proxy_<cat>, test_<cat>_ID, test_<cat>_OOD)
  run_state.json                     the run in progress: its results folder and Ray Train run name
  checkpoints/                       Ray Train storage: the latest epoch's checkpoint (removed when complete)
  results/<timestamp>/               training_history.json, final_full_accuracy.json, plots, adapter/, merged/,
                                     logs/driver.txt and logs/worker_<rank>.txt
  completed.json                     written last: the completion marker; a seed that has it is skipped
Rerunning an interrupted seed continues from its last checkpoint into the same results folder.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time

from raypipe import cluster
from raypipe.finetune.logs import close_log, open_log
from raypipe.finetune.recipe import FinetuneJob, train_loop_per_worker
from raypipe.fs import Location
from raypipe.tasks.experiment import CONFIG, DATA_CONFIG, Experiment, load_experiment
from raypipe.tasks.trigger import write_datasets
from raypipe.tracking import find_dotenv_path

MARKER = "completed.json"
STATE = "run_state.json"
REQUIRED_OUTPUTS = ("training_history.json", "final_full_accuracy.json", "loss_curve.png", "accuracy_curve.png",
                    "accuracy_histogram.png", "merged/config.json")


def seed_folder(exp_dir: str, seed: int) -> str:
    exp_dir = os.path.abspath(exp_dir)
    return exp_dir if os.path.basename(exp_dir.rstrip("/")) == f"seed_{seed}" else os.path.join(exp_dir, f"seed_{seed}")


def prepare_seed(experiment: Experiment, seed: int | None = None, *, refresh: bool = False) -> Experiment:
    """The seed's experiment in its own folder, created from `experiment` (seed set, hub id suffixed) when missing or
    refreshed; an existing seed folder is read instead (once), so that an interrupted run resumes with the settings
    it began with; `refresh` (a rerun) rewrites it from the experiment."""
    seed = experiment.seed if seed is None else seed
    folder = seed_folder(experiment.folder, seed)
    if folder == experiment.folder:
        return experiment
    if not refresh and os.path.isfile(os.path.join(folder, CONFIG)):
        return load_experiment(folder)  # a hand-edited seed config is checked too
    seeded = experiment.with_seed(seed, folder)
    os.makedirs(folder, exist_ok=True)
    _write_json(os.path.join(folder, CONFIG), seeded.config.to_dict())
    shutil.copyfile(os.path.join(experiment.folder, DATA_CONFIG), os.path.join(folder, DATA_CONFIG))
    return seeded


def read_marker(seed_dir: str) -> dict | None:
    """The completion marker's content, or None while the seed is not complete."""
    return _read_json(os.path.join(seed_dir, MARKER))


def cpus_per_worker(experiment: Experiment, use_gpu: bool) -> int:
    import ray

    finetune = experiment.config.finetune_config
    if finetune.cpus_per_worker:
        return finetune.cpus_per_worker
    if use_gpu:
        return 1
    cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    cpus = [c for c in cpus if c > 0] or [1]
    return max(1, int(min(cpus)) // finetune.num_workers)


def run_finetune(experiment: Experiment | str, seed: int | None = None, *, rerun: bool = False,
                 address: str | None = None, use_gpu: bool | None = None, dotenv_path: str | None = None) -> dict:
    """Finetune one seed (see the module docstring); returns its completion marker (`skipped` when it was done).

    `experiment`: a loaded Experiment (an experiment's or a seed's: see `prepare_seed`) or a folder to read."""

    if not isinstance(experiment, Experiment):
        experiment = load_experiment(experiment)
    experiment = prepare_seed(experiment, seed, refresh=rerun)
    seed_dir = experiment.folder
    marker = read_marker(seed_dir)
    if marker is not None and not rerun:
        return {**marker, "skipped": True}
    if rerun:  # a fresh run: a new results folder and a new Ray Train run name
        for name in (MARKER, STATE):
            if os.path.exists(os.path.join(seed_dir, name)):
                os.remove(os.path.join(seed_dir, name))
        shutil.rmtree(os.path.join(seed_dir, "checkpoints"), ignore_errors=True)
    config = experiment.config
    write_datasets(experiment.spec, config.seed, os.path.join(seed_dir, "generated_data"),
                   is_categorical=config.is_categorical, output_preamble=config.output_preamble,
                   splits=experiment.splits())

    cluster.connect(address, quiet=False)  # the worker's epochs show on the console
    use_gpu = cluster.use_gpu(config.finetune_config.use_gpu if use_gpu is None else use_gpu)
    cpus = cpus_per_worker(experiment, use_gpu)

    state = _read_json(os.path.join(seed_dir, STATE))
    resuming = state is not None and os.path.isdir(os.path.join(seed_dir, state["results_dir"]))
    if not resuming:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        state = {"results_dir": f"results/{stamp}", "train_run": f"finetune-{stamp}", "started_at": time.time(),
                 "seed": config.seed}
        os.makedirs(os.path.join(seed_dir, state["results_dir"]), exist_ok=True)
        _write_json(os.path.join(seed_dir, STATE), state)
    results_dir = os.path.join(seed_dir, state["results_dir"])
    attempt_started = time.time()

    job = FinetuneJob(experiment=experiment, results_dir=results_dir,
                      model_id=config.finetune_config.model_for(use_gpu), use_gpu=use_gpu, cpus_per_worker=cpus,
                      run_name=f"{os.path.basename(os.path.dirname(seed_dir))}-seed{config.seed}",
                      dotenv=dotenv_path if dotenv_path is not None else find_dotenv_path())
    log = open_log(results_dir, "driver")
    workers = config.finetune_config.num_workers
    log.info(f"raypipe: {seed_dir}: {'resuming' if resuming else 'starting'} {job.model_id} on {workers} Ray Train "
             f"worker(s), {cpus} CPU(s){' and a GPU' if use_gpu else ''} each; results in {results_dir}")
    try:
        _fit(job, seed_dir, state["train_run"])
        missing = [name for name in REQUIRED_OUTPUTS if not os.path.exists(os.path.join(results_dir, name))]
        if missing:
            raise RuntimeError(f"{seed_dir}: the finetune ended without {', '.join(missing)}")
    except BaseException as exc:
        log.error(f"raypipe: {seed_dir}: failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}")
        close_log(log)
        raise
    final = _read_json(os.path.join(results_dir, "final_full_accuracy.json"))
    marker = {"seed": config.seed, "results_dir": state["results_dir"], "model": job.model_id, "use_gpu": use_gpu,
              "accuracy": final["accuracy"], "epochs": final["epochs"], "resumed_from": final["resumed_from"],
              "started_at": state["started_at"], "attempt_started_at": attempt_started, "finished_at": time.time()}
    _write_json(os.path.join(seed_dir, MARKER), marker)  # last: only now is the seed complete
    shutil.rmtree(os.path.join(seed_dir, "checkpoints"), ignore_errors=True)
    os.remove(os.path.join(seed_dir, STATE))
    log.info(f"raypipe: {seed_dir}: complete; final accuracy " +
             ", ".join(f"{k} {v:.3f}" for k, v in final["accuracy"].items() if v is not None))
    close_log(log)
    return {**marker, "skipped": False}


def _fit(job, seed_dir: str, train_run: str) -> None:
    """The Ray Train run; same storage and name as an interrupted attempt, so the workers start from its latest
    checkpoint (ray.train.get_checkpoint())."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    finetune = job.experiment.config.finetune_config
    resources = {"CPU": job.cpus_per_worker, **({"GPU": 1} if job.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=finetune.num_workers, use_gpu=job.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(storage_path=os.path.join(seed_dir, "checkpoints"), name=train_run,
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, data) -> None:
    Location(os.path.dirname(path)).write_json(os.path.basename(path), data, indent=2)

"""Experiments x seeds on Ray Tune (the seed's multi_seed_main.py and run_all.py), the shipped templates, summaries.

`run_experiments(exp_dirs, seeds)` reads every experiment folder once (all are checked before any Ray work), makes a
seed folder per (experiment, seed), skips the seeds whose completion marker exists, and runs the rest as concurrent
Ray Tune trials: each trial drives one seed's Ray Train finetune (`run_finetune`) with the seed's experiment as the
driver read it, and as many run at once as the cluster has room for their Train workers. Then each experiment
folder gets summary.json (final train/ID/OOD accuracy over its complete seeds: mean, std, min, max) and summary.png.
Templates are the folders under experiments/ at the repository root (or $RAYPIPE_EXPERIMENTS_DIR).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from raypipe import cluster
from raypipe.errors import UserError
from raypipe.finetune import plots
from raypipe.finetune.run import MARKER, cpus_per_worker, prepare_seed, read_marker, run_finetune
from raypipe.fs import Location
from raypipe.tasks.experiment import CONFIG, DATA_CONFIG, Experiment, load_experiment
from raypipe.tracking import find_dotenv_path

# --- templates -----------------------------------------------------------------------------------------------------

def templates_dir() -> Path:
    return Path(os.environ.get("RAYPIPE_EXPERIMENTS_DIR", Path(__file__).resolve().parents[2] / "experiments"))


def list_templates() -> dict[str, str]:
    """Template name -> its description (config.json's "_description")."""
    root = templates_dir()
    found = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if (folder / CONFIG).is_file() and (folder / DATA_CONFIG).is_file():
            found[folder.name] = json.loads((folder / CONFIG).read_text()).get("_description", "")
    return found


def template_path(name: str) -> Path:
    if name not in list_templates():
        raise UserError(f"unknown experiment template {name!r}; known: {', '.join(list_templates()) or 'none'} "
                        f"(in {templates_dir()})")
    return templates_dir() / name


def new_experiment(template: str, exp_dir: str) -> str:
    """Copy a template's config.json and data_config.json into a new experiment folder."""
    source = template_path(template)
    target = Path(exp_dir)
    if (target / CONFIG).exists() or (target / DATA_CONFIG).exists():
        raise UserError(f"{exp_dir} already holds an experiment (config.json / data_config.json)")
    target.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, DATA_CONFIG):
        shutil.copyfile(source / name, target / name)
    return str(target)


def describe_experiment(folder: str) -> dict:
    """A validated experiment's shape: rows per split and the label words."""
    experiment = load_experiment(folder)
    finetune = experiment.config.finetune_config
    return {"rows": {name: len(rows) for name, rows in experiment.splits().items()},
            "label_words": experiment.label_words(), "model": finetune.model, "gpu_model": finetune.gpu_model,
            "epochs": finetune.epochs}


# --- summaries -----------------------------------------------------------------------------------------------------

def summarize(exp_dir: str) -> dict:
    """Write summary.json and summary.png over the experiment's complete seeds; return the summary."""

    markers = {}
    for folder in sorted(Path(exp_dir).glob("seed_*")):
        marker = read_marker(str(folder))
        if marker is not None:
            markers[marker["seed"]] = marker
    summary: dict = {"experiment": Path(exp_dir).resolve().name, "n_seeds": len(markers), "seeds": sorted(markers),
                     "accuracy": {}, "results": {s: f"seed_{s}/{m['results_dir']}" for s, m in markers.items()}}
    for kind in ("train", "ID", "OOD"):
        values = [m["accuracy"].get(kind) for m in markers.values()]
        values = [v for v in values if v is not None]
        if values:
            summary["accuracy"][kind] = {"mean": statistics.fmean(values),
                                         "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                                         "min": min(values), "max": max(values), "values": values}
    Location(exp_dir).write_json("summary.json", summary, indent=2)
    if summary["accuracy"]:
        plots.save_png(exp_dir, "summary.png", plots.seeds_summary_figure(summary))
    return summary


# --- many seeds on Ray Tune ----------------------------------------------------------------------------------------

def _seed_trial(config: dict, seeds: list[Experiment]) -> None:
    """A Tune trial: one seed's finetune (its Ray Train workers hold the resources, not this driver)."""
    from ray import tune

    marker = run_finetune(seeds[config["index"]], rerun=config["rerun"], use_gpu=config["use_gpu"],
                          dotenv_path=config["dotenv"])
    tune.report({f"final_{k}": v for k, v in marker["accuracy"].items() if v is not None})


def concurrent_trials(workers: int, cpus_per_worker: int, use_gpu: bool) -> int:
    """How many seeds fit at once: Train workers packed per node by CPUs (and GPUs), at least one."""
    import ray

    slots = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node["Resources"]
        fit = int(resources.get("CPU", 0) // cpus_per_worker)
        if use_gpu:
            fit = min(fit, int(resources.get("GPU", 0)))
        slots += fit
    return max(1, slots // workers)


def run_experiments(exp_dirs: list[str], seeds: list[int] | None = None, *, rerun: bool = False,
                    address: str | None = None, use_gpu: bool | None = None,
                    dotenv_path: str | None = None) -> dict[str, dict]:
    """Every (experiment, seed) finetuned, complete ones skipped; returns each experiment's summary.

    Seeds default to each experiment's config seed. Every folder is read and checked before any Ray work starts.
    `dotenv_path`: the .env the workers read (W&B key, hub token); default: ./.env searched upwards."""

    exp_dirs = [os.path.abspath(d) for d in exp_dirs]
    if not exp_dirs:
        raise UserError("no experiment folder given")
    experiments = [load_experiment(folder) for folder in exp_dirs]
    seeded = [prepare_seed(experiment, seed, refresh=rerun)
              for experiment in experiments for seed in seeds or [experiment.seed]]
    pending = [s for s in seeded if rerun or read_marker(s.folder) is None]
    for experiment in seeded:
        if not any(p.folder == experiment.folder for p in pending):
            print(f"raypipe: {experiment.folder} is complete ({MARKER}); skipped", flush=True)
    failures: dict[str, str] = {}
    if pending:
        dotenv = dotenv_path if dotenv_path is not None else find_dotenv_path()
        failures = _run_pending(pending, rerun, address, use_gpu, dotenv)
    summaries = {folder: summarize(folder) for folder in exp_dirs}
    if failures:
        raise RuntimeError("; ".join(f"{d}: {e}" for d, e in failures.items()))
    return summaries


def _run_pending(pending: list[Experiment], rerun: bool, address: str | None, use_gpu: bool | None,
                 dotenv: str | None) -> dict[str, str]:

    cluster.connect(address, quiet=False)
    if len(pending) == 1:  # one seed: no Tune layer in between
        try:
            run_finetune(pending[0], rerun=rerun, use_gpu=use_gpu, dotenv_path=dotenv)
        except UserError:
            raise
        except Exception as exc:  # Ray Train's TrainingFailedError is no RuntimeError: a failed seed, as under Tune
            return {pending[0].folder: str(exc).strip().splitlines()[-1][:500] if str(exc).strip() else repr(exc)}
        return {}
    from ray import tune

    finetune = pending[0].config.finetune_config
    gpu = cluster.use_gpu(use_gpu if use_gpu is not None else finetune.use_gpu)
    fits = concurrent_trials(finetune.num_workers, cpus_per_worker(pending[0], gpu), gpu)
    print(f"raypipe: {len(pending)} seed(s) to finetune, {min(fits, len(pending))} at a time", flush=True)
    storage = tempfile.mkdtemp(prefix="raypipe-tune-")  # Tune's own state (pickles) stays out of the folders
    try:
        # A trial only drives: its Train workers ask for the CPUs/GPUs, so the trial asks for none (Tune refuses an
        # empty request; a little memory is a request that takes no CPU from the workers). The seeds' experiments
        # travel through the object store, as read.
        trainable = tune.with_resources(tune.with_parameters(_seed_trial, seeds=pending),
                                        {"CPU": 0, "memory": 64 * 1024**2})
        tuner = tune.Tuner(
            trainable,
            param_space={"index": tune.grid_search(list(range(len(pending)))), "rerun": rerun, "use_gpu": use_gpu,
                         "dotenv": dotenv},
            tune_config=tune.TuneConfig(max_concurrent_trials=max(1, min(fits, len(pending))), reuse_actors=False),
            run_config=tune.RunConfig(storage_path=storage, name="raypipe-seeds", verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        grid = tuner.fit()
        failures = {}
        for result in grid:
            if result.error is not None:
                folder = pending[result.config["index"]].folder
                failures[folder] = str(result.error).strip().splitlines()[-1][:500]
        return failures
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def summary_line(exp_dir: str, summary: dict) -> str:
    """One line per experiment for the command line: seeds and mean ± std of final ID/OOD accuracy."""
    parts = [f"{k} {_fmt(v['mean'])} ± {_fmt(v['std'])}" for k, v in summary["accuracy"].items()]
    return f"{exp_dir}: {summary['n_seeds']} seed(s) complete; final accuracy " + (", ".join(parts) or "n/a")

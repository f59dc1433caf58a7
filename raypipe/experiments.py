"""Experiments x seeds on Ray Tune (the seed's multi_seed_main.py and run_all.py), the shipped templates, summaries.

`run_experiments(exp_dirs, seeds)` makes a seed folder per (experiment, seed), skips the seeds whose completion
marker exists, and runs the rest as concurrent Ray Tune trials: each trial drives one seed's Ray Train finetune
(`run_finetune`), and as many run at once as the cluster has room for their Train workers. Then each experiment
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

from raypipe.errors import UserError
from raypipe.finetune.run import MARKER, load_experiment, prepare_seed_dir, read_marker, run_finetune


# --- templates -----------------------------------------------------------------------------------------------------

def templates_dir() -> Path:
    return Path(os.environ.get("RAYPIPE_EXPERIMENTS_DIR", Path(__file__).resolve().parents[1] / "experiments"))


def list_templates() -> dict[str, str]:
    """Template name -> its description (config.json's "_description")."""
    root = templates_dir()
    found = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if (folder / "config.json").is_file() and (folder / "data_config.json").is_file():
            found[folder.name] = json.loads((folder / "config.json").read_text()).get("_description", "")
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
    if (target / "config.json").exists() or (target / "data_config.json").exists():
        raise UserError(f"{exp_dir} already holds an experiment (config.json / data_config.json)")
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "data_config.json"):
        shutil.copyfile(source / name, target / name)
    return str(target)


def describe_experiment(folder: str) -> dict:
    """A validated experiment's shape: rows per split (for seed 0) and the label words."""
    from raypipe.tasks.trigger import generate_rows

    config, spec = load_experiment(folder)
    splits = generate_rows(spec, config.seed, is_categorical=config.is_categorical,
                           output_preamble=config.output_preamble)
    return {"rows": {name: len(rows) for name, rows in splits.items()},
            "label_words": spec.label_words(config.is_categorical), "model": config.finetune_config.model,
            "gpu_model": config.finetune_config.gpu_model, "epochs": config.finetune_config.epochs}


# --- summaries -----------------------------------------------------------------------------------------------------

def summarize(exp_dir: str) -> dict:
    """Write summary.json and summary.png over the experiment's complete seeds; return the summary."""
    from raypipe.finetune import plots

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
    from raypipe.fs import Location

    Location(exp_dir).write_atomic("summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    if summary["accuracy"]:
        plots.save_png(exp_dir, "summary.png", plots.seeds_summary_figure(summary))
    return summary


# --- many seeds on Ray Tune ----------------------------------------------------------------------------------------

def _seed_trial(config: dict) -> None:
    """A Tune trial: one seed's finetune (its Ray Train workers hold the resources, not this driver)."""
    from ray import tune

    marker = run_finetune(config["seed_dir"], rerun=config["rerun"], use_gpu=config["use_gpu"],
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
                    address: str | None = None, use_gpu: bool | None = None) -> dict[str, dict]:
    """Every (experiment, seed) finetuned, complete ones skipped; returns each experiment's summary.

    Seeds default to each experiment's config seed. Every folder is checked before any Ray work starts.
    """
    from raypipe.tracking import find_dotenv_path

    exp_dirs = [os.path.abspath(d) for d in exp_dirs]
    if not exp_dirs:
        raise UserError("no experiment folder given")
    for folder in exp_dirs:
        load_experiment(folder)
    seed_dirs = []
    for folder in exp_dirs:
        for seed in seeds or [load_experiment(folder)[0].seed]:
            seed_dirs.append(prepare_seed_dir(folder, seed, refresh=rerun))
    pending = [d for d in seed_dirs if rerun or read_marker(d) is None]
    skipped = [d for d in seed_dirs if d not in pending]
    for folder in skipped:
        print(f"raypipe: {folder} is complete ({MARKER}); skipped", flush=True)
    failures: dict[str, str] = {}
    if pending:
        failures = _run_pending(pending, rerun, address, use_gpu, find_dotenv_path())
    summaries = {folder: summarize(folder) for folder in exp_dirs}
    if failures:
        raise RuntimeError("; ".join(f"{d}: {e}" for d, e in failures.items()))
    return summaries


def _run_pending(pending: list[str], rerun: bool, address: str | None, use_gpu: bool | None,
                 dotenv: str | None) -> dict[str, str]:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)
    if len(pending) == 1:  # one seed: no Tune layer in between
        run_finetune(pending[0], rerun=rerun, use_gpu=use_gpu, dotenv_path=dotenv)
        return {}
    from ray import tune

    from raypipe.finetune.run import cpus_per_worker

    config = load_experiment(pending[0])[0]
    gpu = use_gpu if use_gpu is not None else (config.finetune_config.use_gpu if config.finetune_config.use_gpu
                                               is not None else ray.cluster_resources().get("GPU", 0) > 0)
    fits = concurrent_trials(config.finetune_config.num_workers, cpus_per_worker(config, gpu), gpu)
    print(f"raypipe: {len(pending)} seed(s) to finetune, {min(fits, len(pending))} at a time", flush=True)
    storage = tempfile.mkdtemp(prefix="raypipe-tune-")  # Tune's own state (pickles) stays out of the folders
    try:
        # A trial only drives: its Train workers ask for the CPUs/GPUs, so the trial asks for none (Tune refuses an
        # empty request; a little memory is a request that takes no CPU from the workers).
        trainable = tune.with_resources(_seed_trial, {"CPU": 0, "memory": 64 * 1024**2})
        tuner = tune.Tuner(
            trainable,
            param_space={"seed_dir": tune.grid_search(pending), "rerun": rerun, "use_gpu": use_gpu,
                         "dotenv": dotenv},
            tune_config=tune.TuneConfig(max_concurrent_trials=max(1, min(fits, len(pending))), reuse_actors=False),
            run_config=tune.RunConfig(storage_path=storage, name="raypipe-seeds", verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        grid = tuner.fit()
        failures = {}
        for result in grid:
            if result.error is not None:
                failures[result.config["seed_dir"]] = str(result.error).strip().splitlines()[-1][:500]
        return failures
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def summary_line(exp_dir: str, summary: dict) -> str:
    """One line per experiment for the command line: seeds and mean ± std of final ID/OOD accuracy."""
    parts = [f"{k} {_fmt(v['mean'])} ± {_fmt(v['std'])}" for k, v in summary["accuracy"].items()]
    return f"{exp_dir}: {summary['n_seeds']} seed(s) complete; final accuracy " + (", ".join(parts) or "n/a")

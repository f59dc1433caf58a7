"""The `raypipe finetune` and `raypipe experiments ...` commands, registered on the main typer app by `register`.

    raypipe finetune EXP_DIR [EXP_DIR ...] [--seeds 42 123 456] [--rerun] [--address ADDR] [--gpu/--no-gpu]
    raypipe finetune --from-template 2d_0proxy runs/np        # copy a template, then run it
    raypipe experiments list | new TEMPLATE EXP_DIR | validate EXP_DIR... | data EXP_DIR | summary EXP_DIR...
    raypipe experiments analyze RESULTS_DIR [--layers 0,10,-1] [--pairs 8]

The options of `finetune` and `experiments analyze` (and their arguments) are derived from their config dataclasses
in raypipe/finetune/config.py, with `--config FILE` and `--print-config`, as the build's are (raypipe/options.py).
The other `experiments` commands take a folder or two and a flag; they are written by hand.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional

import typer

from raypipe.errors import UserError, user_errors
from raypipe.finetune.analysis import analyze_run
from raypipe.finetune.config import AnalyzeConfig, FinetuneCommandConfig
from raypipe.finetune.experiments import (
    describe_experiment,
    list_templates,
    new_experiment,
    run_experiments,
    summarize,
    summary_line,
)
from raypipe.options import with_options
from raypipe.selection import parse_layers
from raypipe.tasks.experiment import CONFIG, load_experiment
from raypipe.tasks.templates import list_template_presets
from raypipe.tasks.trigger import write_datasets


def _seeds_and_folders(exp_dirs: list[str], seeds: Optional[list]) -> tuple[list[str], list[int] | None]:
    """`--seeds 42 123 456`: click gives --seeds one value and the rest as arguments; whole numbers that are not
    folders join the seeds (42,123 works too, as does repeating --seeds)."""
    if not seeds:
        return exp_dirs, None
    values = [v for s in seeds for v in str(s).split(",") if v.strip()]
    folders = []
    for item in exp_dirs:
        if item.strip().isdigit() and not os.path.isdir(item):
            values.append(item)
        else:
            folders.append(item)
    try:
        return folders, [int(v) for v in values]
    except ValueError:
        raise UserError(f"--seeds takes whole numbers, got {' '.join(values)}") from None


def _given_seeds(given: dict) -> dict:
    """The command line's values with click's `--seeds 42 123 456` undone (see `_seeds_and_folders`)."""
    folders, seeds = _seeds_and_folders(list(given.get(("exp_dirs",)) or []), given.get(("seeds",)))
    return {**given, ("exp_dirs",): folders, ("seeds",): seeds}


def finetune(config: FinetuneCommandConfig) -> None:
    """Finetune every (experiment, seed) on Ray Train, concurrently on Ray Tune; complete seeds are skipped and
    interrupted ones resume. Writes EXP/seed_<s>/results/<time>/ and EXP/summary.json + summary.png."""

    folders = config.exp_dirs
    if config.from_template and not os.path.isfile(os.path.join(folders[0], CONFIG)):
        new_experiment(config.from_template, folders[0])
        typer.echo(f"raypipe: copied template {config.from_template} into {folders[0]}")
    try:
        summaries = run_experiments(folders, config.seeds or None, rerun=config.rerun, address=config.address,
                                    use_gpu=config.gpu)
    except RuntimeError as exc:  # some seeds failed; the others finished and are summarized
        typer.echo(f"raypipe: {exc}", err=True)
        raise typer.Exit(1)
    for folder, summary in summaries.items():
        typer.echo(summary_line(folder, summary))


experiments_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                              help="Experiment templates, datasets, summaries and analysis of finetunes.")


@experiments_app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json")) -> None:
    """The shipped experiment templates and the prompt-template presets."""

    templates, presets = list_templates(), list_template_presets()
    if as_json:
        typer.echo(json.dumps({"experiments": templates, "prompt_templates": presets}, indent=2))
        return
    typer.echo("experiment templates (raypipe experiments new NAME EXP_DIR):")
    for name, description in templates.items():
        typer.echo(f"  {name:28s} {description}")
    typer.echo("prompt_templates presets (data_config.json):")
    for name, description in presets.items():
        typer.echo(f"  {name:28s} {description}")


@experiments_app.command("new")
@user_errors
def new_command(template: str = typer.Argument(...), exp_dir: str = typer.Argument(...)) -> None:
    """Start an experiment folder from a template."""

    typer.echo(f"raypipe: wrote {new_experiment(template, exp_dir)} (edit its config.json / data_config.json)")


@experiments_app.command("validate")
@user_errors
def validate_command(exp_dirs: list[str] = typer.Argument(...)) -> None:
    """Check experiment folders' config.json and data_config.json; print their splits' sizes."""

    for folder in exp_dirs:
        info = describe_experiment(folder)
        rows = ", ".join(f"{k} {v}" for k, v in info["rows"].items())
        typer.echo(f"{folder}: ok; {rows}; labels {'/'.join(info['label_words'])}; model {info['model']}")


@experiments_app.command("data")
@user_errors
def data_command(exp_dir: str = typer.Argument(...),
                 seed: Optional[int] = typer.Option(None, "--seed", help="Default: the config's seed."),
                 out_dir: Optional[str] = typer.Option(None, "--out-dir", help="Default: EXP_DIR/generated_data.")
                 ) -> None:
    """Write an experiment's datasets as JSONL (the seed's generate_all_2d_datasets.py)."""

    experiment = load_experiment(exp_dir)
    config = experiment.config
    paths = write_datasets(experiment.spec, config.seed if seed is None else seed,
                           out_dir or os.path.join(exp_dir, "generated_data"),
                           is_categorical=config.is_categorical, output_preamble=config.output_preamble)
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")


@experiments_app.command("summary")
@user_errors
def summary_command(exp_dirs: list[str] = typer.Argument(...)) -> None:
    """(Re)write summary.json and summary.png over each experiment's complete seeds."""

    for folder in exp_dirs:
        if not os.path.isdir(folder):
            raise UserError(f"{folder}: no such experiment folder")
        typer.echo(summary_line(folder, summarize(folder)))


def analyze_command(config: AnalyzeConfig) -> None:
    """Activation patching (trigger prompt -> no-trigger twin) and trigger ablation on a finished finetune:
    writes RESULTS/analysis/patching.json + patching_heatmap.png + ablation.json (all or none); says what it
    skipped and why."""

    out, notes = analyze_run(config.results_dir, layers=parse_layers(config.layers), n_pairs=config.pairs,
                             n_positions=config.positions)
    for note in notes:
        typer.echo(f"raypipe: {note}")
    typer.echo(f"raypipe: wrote {out}")


def _derived(name: str, run: Callable, prepare: Callable[[dict], dict] | None = None) -> Callable:
    """`run(config)` as the typer command `name`: options from its config dataclass, user mistakes one line."""
    return user_errors(with_options(name, prepare)(run))


experiments_app.command("analyze")(_derived("analyze", analyze_command))


def register(app: typer.Typer) -> None:
    """Add `finetune` and the `experiments` group to the main app."""
    app.command("finetune")(_derived("finetune", finetune, _given_seeds))
    app.add_typer(experiments_app, name="experiments")


if __name__ == "__main__":  # `python -m raypipe.cli_finetune finetune ...`: these commands alone
    _app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
    register(_app)
    _app()

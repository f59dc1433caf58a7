"""The `raypipe` command: build, presets, status, train, sweep, evaluate, explore (and finetune, experiments from
raypipe/cli_finetune.py), wired to the library's functions.

The options of build, train, sweep and evaluate are derived from their config dataclasses, with `--config FILE` and
`--print-config` (raypipe/options.py); this module holds the commands and their wiring only. `python -m
raypipe.build` and `python -m raypipe.train [--sweep]` are the same commands. User mistakes (`UserError`) end as one
line on stderr and exit code 2 (`user_errors`); nothing is marked complete before them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import typer

import raypipe
from raypipe.config import PRESETS, BuildConfig
from raypipe.errors import UserError, user_errors
from raypipe.fs import Location
from raypipe.knobs import recorded_config
from raypipe.options import from_dict, to_yaml, with_options
from raypipe.output import read_manifest
from raypipe.pipeline import run_build
from raypipe.probes.config import EvaluateConfig, ScoreConfig, SweepConfig, TrainConfig
from raypipe.probes.evaluate import run_evaluate
from raypipe.probes.linear import run_train
from raypipe.probes.score import run_score
from raypipe.probes.sweep import run_sweep

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Probe datasets from LLM activations, on Ray.",
)


def config_command(name: str):
    """Register `run(config, ...)` as the command `name`: its options derived from the command's config dataclass
    (with --config and --print-config), its user mistakes one line."""
    def register(run):
        return app.command(name)(user_errors(with_options(name)(run)))

    return register


@config_command("build")
def build(config: BuildConfig, overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an output folder built with another config.")) -> None:
    """Build a probe dataset: rollouts, labels and prefill hidden states, as safetensors shards with a manifest."""

    raise typer.Exit(run_build(config, overwrite=overwrite))


@app.command("presets")
def presets(as_json: bool = typer.Option(False, "--json", help="Print every field as JSON.")) -> None:
    """List the model presets."""
    if as_json:
        import dataclasses

        typer.echo(json.dumps({name: dataclasses.asdict(p) for name, p in PRESETS.items()}, indent=2))
        return
    for name, p in PRESETS.items():
        typer.echo(
            f"{name:20s} {p.model_id:36s} tp={p.vllm.tp} dp={p.dp} dtype={p.dtype} max_tokens={p.max_tokens}  "
            f"{p.description}"
        )


@app.command("status")
@user_errors
def status(out_dir: str = typer.Argument(..., help="A build's output folder."),
           config: bool = typer.Option(False, "--config", help="Print the build's resolved config as YAML instead: "
                                       "`raypipe build --config FILE` reruns or resumes the build with it.")) -> None:
    """Shards complete, failed and pending in a build's output folder (or, with --config, its config)."""

    manifest = read_manifest(Location(out_dir))
    if config:
        header = f"the config of the build in {out_dir}, from its manifest\nrerun or resume it: raypipe build --config FILE"
        recorded = recorded_config(BuildConfig, manifest.config or {})
        typer.echo(to_yaml("build", from_dict("build", recorded, f"{out_dir}/manifest.json"), header), nl=False)
        return
    for split, counts in manifest.status_counts().items():
        typer.echo(f"{split}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))


# --- probes --------------------------------------------------------------------------------------------------------

@config_command("train")
def train(config: TrainConfig) -> None:
    """Train one linear probe as a Ray Train task: checkpoints, metrics.jsonl, evaluation.json, plots.

    With --sweep, runs the (layer x position) sweep instead and takes the options of `raypipe sweep`.
    """

    evaluation = run_train(config)
    test = evaluation.get("test", {}).get("significance", {})
    typer.echo(
        f"best epoch {evaluation['best_epoch']} (selected on {evaluation['selected_on']}): test "
        f"{evaluation['metric']} {_fmt(test.get('value'))} (95% CI {_fmt((test.get('ci95') or [None])[0])}.."
        f"{_fmt((test.get('ci95') or [None, None])[1])}, p={_fmt(test.get('p_value'))})"
        + "".join(f"; {split} {_fmt(evaluation[split]['significance'].get('value'))} "
                  f"(p={_fmt(evaluation[split]['significance'].get('p_value'))})"
                  for split in _evaluation_splits(evaluation))
        + f". Wrote {config.out_dir}"
    )


def _evaluation_splits(scored: dict) -> list[str]:
    """The named evaluation splits in a probe command's output (those beside train, cv and test)."""
    return [key[:-len("_lift")] for key in scored if key.endswith("_lift") and key[:-len("_lift")] not in
            ("train", "cv", "test")]


@config_command("sweep")
def sweep(config: SweepConfig) -> None:
    """One Ridge/Logistic probe per (layer, position), k-fold CV picks the best: performance.json + predictions."""
    performance = run_sweep(config)
    best, metric = performance["best"], performance["metric"]
    typer.echo(
        f"{performance['label']} ({performance['task_type']}): best layer {best['layer']}, position "
        f"{best['position']}: {best['selected_by']} {metric} {_fmt(best[best['selected_by'] + '_score'])}, "
        f"test {_fmt(best['test_score'])}"
        f"{'' if best.get('test_accuracy') is None else ' (accuracy ' + _fmt(best['test_accuracy']) + ')'}"
        + "".join(f", {split} {_fmt(best[split + '_score'])}" for split in _evaluation_splits(best)) + "; "
        f"prompt-length baseline test "
        f"{_fmt(performance['baselines']['prompt_length'].get('test'))}. Wrote {config.out_dir}/performance.json"
    )


@config_command("evaluate")
def evaluate(config: EvaluateConfig) -> None:
    """SEP's evaluation: accuracy and SE probes and the baselines at predicting the model's incorrectness."""
    evaluation = run_evaluate(config)
    for name, probe in evaluation["probes"].items():
        if "best" in probe:
            cell = probe["cells"][probe["best"]]
            typer.echo(
                f"{name} probe: best layer {cell['layer']}, position {cell['position']}: ROC-AUC "
                f"{_fmt(cell['value'])} (95% CI {_fmt(cell['ci95'][0])}..{_fmt(cell['ci95'][1])}, "
                f"p={_fmt(cell['p_value'])})"
                + "".join(f"; {split} {_fmt(scores['value'])} (p={_fmt(scores['p_value'])})"
                          for split, scores in cell.get("splits", {}).items())
            )
        else:
            typer.echo(f"{name} probe: skipped ({probe['skipped']})")
    for name, baseline in evaluation["baselines"].items():
        typer.echo(f"{name} baseline: ROC-AUC {_fmt(baseline['value'])}")
    typer.echo(f"Wrote {config.out_dir}/probe_eval.json and roc_probe_eval.png")


@config_command("score")
def score(config: ScoreConfig, probe_path: Optional[str] = typer.Argument(
        None, metavar="PROBE", help="A saved probe's .safetensors (its card .json beside it): a sweep's "
                                    "probe.safetensors, train's best.safetensors, evaluate's probes/*.safetensors.")
) -> None:
    """Apply a saved probe to every split of a build: per-row scores, and its metric and calibration where the build
    has the probe's label."""
    import dataclasses

    summary = run_score(dataclasses.replace(config, probe=probe_path) if probe_path else config)
    card = summary["card"]
    typer.echo(f"{card['label']} probe (layer {card['layer']}, position {card['position']}, from "
               f"{card['produced_by']}) on {config.data_dir}:")
    for split, entry in summary["splits"].items():
        line = f"  {split}: {entry['rows']} rows"
        scored = entry.get("significance")
        if scored:
            line += (f", {scored['metric']} {_fmt(scored['value'])} (95% CI {_fmt(scored['ci95'][0])}.."
                     f"{_fmt(scored['ci95'][1])}, p={_fmt(scored['p_value'])})")
        if entry.get("calibration"):
            line += f", ECE {_fmt(entry['calibration']['value'])}"
        if entry.get("non_finite_scores"):
            line += f"; {entry['non_finite_scores']} rows with non-finite features scored NaN"
        typer.echo(line)
    typer.echo(f"Wrote {config.out_dir}/scores.parquet and score.json")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@app.command("explore")
@user_errors
def explore(
    data_dir: str = typer.Argument(..., help="A build's output folder."),
    probe: Optional[str] = typer.Option(None, "--probe", help="A `raypipe train` output folder."),
    sweep_dir: Optional[str] = typer.Option(None, "--sweep", help="A `raypipe sweep` output folder."),
    eval_dir: Optional[str] = typer.Option(None, "--eval", help="A `raypipe evaluate` output folder."),
    score_dir: Optional[str] = typer.Option(None, "--score", help="A `raypipe score` output folder (of this build)."),
    edit: bool = typer.Option(True, "--edit/--app", help="Open the notebook for editing, or as a read-only app."),
    port: Optional[int] = typer.Option(None, help="Port of marimo's server."),
    headless: bool = typer.Option(False, "--headless", help="Do not open a browser."),
) -> None:
    """Open the marimo explorer (notebooks/explorer.py) over a build and its probe outputs."""
    import subprocess
    from pathlib import Path

    read_manifest(Location(data_dir))
    notebook = Path(raypipe.__file__).resolve().parents[1] / "notebooks" / "explorer.py"
    if not notebook.is_file():
        raise UserError(f"the explorer notebook is not at {notebook}: install raypipe from a checkout (pip install "
                        "-e .)")
    command = [sys.executable, "-m", "marimo", "edit" if edit else "run", str(notebook)]
    command += (["--headless"] if headless else []) + (["--port", str(port)] if port else [])
    command += ["--", "--data-dir", os.path.abspath(data_dir)]
    for flag, folder in (("--probe-dir", probe), ("--sweep-dir", sweep_dir), ("--eval-dir", eval_dir),
                         ("--score-dir", score_dir)):
        if folder:
            command += [flag, os.path.abspath(folder)]
    raise typer.Exit(subprocess.call(command))


from raypipe.cli_finetune import register; register(app)  # noqa: E402,E702  finetune, experiments


def _without_sweep_flag(args: list[str]) -> tuple[list[str], bool]:
    return [a for a in args if a != "--sweep"], "--sweep" in args


def _run(typer_app, args: list[str], prog_name: str) -> None:
    """Run a command and end the process with its exit code, without the interpreter's teardown.

    Seen here: about one exit in ten of `raypipe sweep` aborted (SIGABRT, "terminate called without an active
    exception") while the native runtimes loaded together (torch's OpenMP, OpenBLAS, pyarrow's thread pools) were
    torn down, turning a clean exit 2 into 134. The outputs are written and flushed by then; Ray, when this process
    started it, is shut down first.
    """
    try:
        typer_app(args=args, prog_name=prog_name)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    os._exit(code)


def main() -> None:
    """The `raypipe` script. `raypipe train --sweep ...` is `raypipe sweep ...`, as documented."""
    args = sys.argv[1:]
    if args[:1] == ["train"]:
        rest, sweep_requested = _without_sweep_flag(args[1:])
        if sweep_requested:
            args = ["sweep", *rest]
    _run(app, args, "raypipe")


def _single(command, prog_name: str, args: list[str]) -> None:
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command()(command)
    _run(single, args, prog_name)


def build_main() -> None:
    """`python -m raypipe.build`: the build command alone."""
    _single(build, "python -m raypipe.build", sys.argv[1:])


def train_main() -> None:
    """`python -m raypipe.train [--sweep]`: the train command, or the sweep when --sweep is given."""
    args, sweep_requested = _without_sweep_flag(sys.argv[1:])
    _single(sweep if sweep_requested else train, "python -m raypipe.train", args)


if __name__ == "__main__":
    main()

"""Configurations of the probe commands: which build, label and features a probe reads, and the knobs of the Ray
Train probe, of the (layer x position) sweep and of SEP's evaluation.

    ProbeRunConfig                 a build in, a folder out, seed, resamples, device
      ProbeInputConfig             + which label (train and sweep)
        TrainConfig                + the Ray Train probe's knobs
        SweepConfig (+ CellsConfig) the sweep's fits
      EvaluateConfig (+ CellsConfig) SEP's evaluation
      ScoreConfig                  a saved probe applied to a build
    CellsConfig                    which (layer, position) cells, the L2 strength, and how cells become Ray work
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from raypipe.config import check_choices, knob
from raypipe.errors import UserError
from raypipe.selection import parse_layers, parse_positions

TaskTypeOption = Literal["auto", "classification", "regression"]
DeviceOption = Literal["auto", "cpu", "cuda"]
ExecutorOption = Literal["ray", "local"]


@dataclass
class ProbeRunConfig:
    """What every probe command shares: a build in, a folder out, and the statistics' seed and resamples."""

    data_dir: str = knob(help="A build's output folder (manifest.json, train/, test/).")
    out_dir: str = knob(help="Where the probe outputs go.")
    seed: int = knob(42, "Seed of the probes' randomness (folds, initialisation, shuffles) and of the resamples.")
    resamples: int = knob(1000, "Bootstrap resamples and label permutations behind each CI and p-value.")
    device: DeviceOption = knob("auto", "Where probes are fitted: auto (cuda where the work runs has one), cpu, "
                                        "cuda.")

    def __post_init__(self) -> None:
        check_choices(self)  # device, task_type, executor: their Literal types hold the choices
        if self.resamples < 10:
            raise UserError(f"--resamples must be at least 10, got {self.resamples}")


@dataclass
class ProbeInputConfig(ProbeRunConfig):
    """Which label a probe trains on; shared by the Ray Train probe and the sweep."""

    label: str | None = knob(None, "Label to predict (default: loop when present, else the first in the "
                                   "manifest).")
    task_type: TaskTypeOption = knob("auto", "auto (0/1 label: classification; a categorical label: multiclass), "
                                             "regression, classification (whole-number classes; more than two: "
                                             "multinomial, sweep only).")
    wandb_project: str | None = knob(None, "Log to this W&B project (offline without a key).")


@dataclass
class CellsConfig:
    """Which (layer, position) cells are fitted, their L2 strength, and how the cells become work: blocks of
    `block_layers` layers x every position, each a Ray task that reads only its own slices of the shards."""

    layers: str | None = knob(None, "Hidden-state layers, e.g. '10,20,-1' (default: every stored one).")
    positions: str | None = knob(None, "Positions, e.g. '-3,-1' or 'marker:TEXT' (default: every stored one; "
                                       "evaluate: SEP's -1 and answer:-2 where stored).")
    alpha: float = knob(1.0, "Regularization: Ridge alpha; Logistic C = 1/alpha.")
    executor: ExecutorOption = knob("ray", "ray: blocks of cells as Ray tasks (a GPU each when the cluster has "
                                           "any); local: in this process.")
    block_layers: int = knob(1, "Layers per block of work (with every position of them): what one task holds.")

    def check_cells(self) -> None:
        if self.alpha <= 0:
            raise UserError(f"--alpha must be positive, got {self.alpha}")
        if self.block_layers < 1:
            raise UserError(f"--block-layers must be at least 1, got {self.block_layers}")
        self.cell_layers(), self.cell_positions()

    def cell_layers(self) -> list[int] | None:
        """The stored hidden-state layers to fit, as given (None: every stored one); the build resolves them."""
        return parse_layers(self.layers)

    def cell_positions(self) -> list[int | str] | None:
        """The stored positions to fit, as given (None: every stored one)."""
        return parse_positions(self.positions, eoi=False)


@dataclass
class SweepConfig(CellsConfig, ProbeInputConfig):
    """The probe pipeline's sweep: one Ridge/Logistic probe per (layer, position), k-fold CV to pick the best."""

    fit_intercept: bool = knob(False, "Add a constant feature (penalised like the others); off, as in the "
                                      "probe-pipeline seed.")
    k_fold: bool = knob(True, "Select the best probe by k-fold CV (without: on train).")
    n_folds: int = knob(5, "Folds of the CV.")
    max_iter: int = knob(100, "Newton steps of the logistic solver.")
    tol: float = knob(1e-4, "Logistic: stop when every gradient entry fell below tol x its start (sklearn's "
                            "default tol).")
    memory_gb: float = knob(2.0, "On a GPU: memory for the features and Gram matrices held at once; probes are "
                                 "solved in chunks that fit.")
    save_all_probes: bool = knob(False, "Save every cell's probe under probes/ (the chosen cell's is always saved: "
                                        "probe.safetensors and its card probe.json).")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_cells()
        if self.k_fold and self.n_folds < 2:
            raise UserError(f"--n-folds must be at least 2, got {self.n_folds}")


@dataclass
class EvaluateConfig(CellsConfig, ProbeRunConfig):
    """SEP's evaluation: accuracy and SE probes (logistic, standardised features) against the model's incorrectness."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_cells()


@dataclass
class ScoreConfig(ProbeRunConfig):
    """A saved probe applied to every split of a build (`raypipe score PROBE`)."""

    probe: str | None = knob(None, "A saved probe: its .safetensors file, with its card (.json) beside it (the "
                                   "command's first argument).")
    any_model: bool = knob(False, "Score a build of another model id (another checkpoint) whose layer count and "
                                  "hidden size match the probe's.")
    executor: ExecutorOption = knob("ray", "ray: the probe's slice is read and scored in a Ray task (a GPU when the "
                                           "cluster has any); local: in this process.")


@dataclass
class TrainConfig(ProbeInputConfig):
    """loop_probe's trainer: one linear probe on one (layer, position), weighted BCE (or MSE), as a Ray Train task."""

    layer: int = knob(-1, "Hidden-state index (0 = embeddings, -1 = last layer).")
    position: int | str = knob(-1, "A stored prompt position: a negative offset ('-1') or 'marker:TEXT'.")
    epochs: int = knob(50, "Training epochs.")
    batch_size: int = knob(256, "Rows per optimizer step.")
    lr: float = knob(1e-3, "AdamW learning rate.")
    weight_decay: float = knob(0.0, "AdamW weight decay.")
    val_fraction: float = knob(0.1, "Stratified train share held out to pick the best epoch; 0 picks it on test, "
                                    "as loop_probe does.")
    standardize: bool = knob(True, "Scale features by the train mean/std (stored in the checkpoint).")
    num_workers: int = knob(1, "Ray Train workers (data-parallel).")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("epochs", "batch_size", "num_workers"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.val_fraction < 0.5:
            raise UserError(f"--val-fraction must be in [0, 0.5), got {self.val_fraction}")

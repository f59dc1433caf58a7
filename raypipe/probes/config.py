"""Configurations of the probe commands: which build, label and features a probe reads, and the knobs of the Ray
Train probe and of the (layer x position) sweep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from raypipe.errors import UserError

TaskTypeOption = Literal["auto", "classification", "regression"]


def _int_list(text: str | None, option: str, allow_markers: bool = False) -> list | None:
    """'-1' or '0,15,-1' as integers (and 'marker:TEXT' entries where allowed); None or 'all' keeps all stored."""
    if text is None or text.strip() == "all":
        return None
    values: list = []
    for part in text.split(","):
        if allow_markers and part.strip().startswith(("marker:", "answer:")):
            values.append(part.strip())
            continue
        try:
            values.append(int(part))
        except ValueError:
            raise UserError(f"{option} must be 'all' or comma-separated integers, got {text!r}")
    return values


@dataclass
class ProbeInputConfig:
    """Which build, label and features a probe trains on; shared by the Ray Train probe and the sweep."""

    data_dir: str
    out_dir: str
    label: str | None = None  # default: 'loop' when present, else the first label in the manifest
    task_type: TaskTypeOption = "auto"  # auto: classification for a 0/1 label, regression otherwise
    seed: int = 42
    resamples: int = 1000  # bootstrap resamples and label permutations for the CI and p-value
    wandb_project: str | None = None
    device: str = "auto"  # auto: cuda when there is one

    def __post_init__(self) -> None:
        if self.task_type not in ("auto", "classification", "regression"):
            raise UserError(f"--task-type must be auto, regression or classification, got {self.task_type!r}")
        if self.resamples < 10:
            raise UserError(f"--resamples must be at least 10, got {self.resamples}")


@dataclass
class SweepConfig(ProbeInputConfig):
    """The probe pipeline's sweep: one Ridge/Logistic probe per (layer, position), k-fold CV to pick the best."""

    layers: str | None = None  # hidden-state indices to sweep; None = every stored layer
    positions: str | None = None
    alpha: float = 1.0  # Ridge alpha; Logistic uses C = 1 / alpha
    fit_intercept: bool = False  # the seed's default; True adds a constant feature (penalised like the others)
    k_fold: bool = True
    n_folds: int = 5
    max_iter: int = 100  # Newton steps of the logistic solver
    tol: float = 1e-4  # logistic: stop when every gradient entry fell below tol x its start (sklearn's default tol)
    memory_gb: float = 2.0  # features and Gram matrices held at once; probes are solved in chunks that fit

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha <= 0:
            raise UserError(f"--alpha must be positive, got {self.alpha}")
        if self.k_fold and self.n_folds < 2:
            raise UserError(f"--n-folds must be at least 2, got {self.n_folds}")
        self.layer_list(), self.position_list()

    def layer_list(self) -> list[int] | None:
        return _int_list(self.layers, "--layers")

    def position_list(self) -> list | None:
        return _int_list(self.positions, "--positions", allow_markers=True)


@dataclass
class TrainConfig(ProbeInputConfig):
    """loop_probe's trainer: one linear probe on one (layer, position), weighted BCE (or MSE), as a Ray Train task."""

    layer: int = -1  # hidden-state index (0 = embeddings, -1 = last layer)
    position: int | str = -1  # a stored position: a negative offset or 'marker:TEXT'
    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.1  # of train, stratified: picks the best epoch; 0 picks on test (loop_probe's way)
    standardize: bool = True  # scale features by train mean/std (stored in the checkpoint)
    num_workers: int = 1  # Ray Train workers (data-parallel)
    use_gpu: bool | None = None  # None: when the cluster has GPUs

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("epochs", "batch_size", "num_workers"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.val_fraction < 0.5:
            raise UserError(f"--val-fraction must be in [0, 0.5), got {self.val_fraction}")

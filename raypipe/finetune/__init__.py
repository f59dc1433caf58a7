"""Finetuning on the trigger task: config.json as dataclasses (`config`), the recipe on Ray Train (`recipe`: setup,
train_epoch, evaluate, save), accuracy by label-word log-likelihood or generation (`accuracy`), tokenization
(`data`), plots, the hub push, and `run_finetune` (`run`: one seed, resumable, skipped when complete)."""

from raypipe.finetune.config import ExperimentConfig, FinetuneConfig, load_config
from raypipe.finetune.run import prepare_seed_dir, read_marker, run_finetune

__all__ = ["ExperimentConfig", "FinetuneConfig", "load_config", "prepare_seed_dir", "read_marker", "run_finetune"]

"""Finetuning on the trigger task, the whole wing in one package: the recipe on Ray Train (`recipe`: setup,
train_epoch, evaluate, save; `steps`: which rows each worker runs; `checkpoint`: epoch state as safetensors + JSON),
`run` (one seed, resumable, skipped when complete), `experiments` (seeds on Ray Tune, templates, summaries),
`analysis` and `patching` (looking inside the finetuned model), accuracy by label-word log-likelihood or generation
(`accuracy`), tokenization (`data`), plots, logs and the hub push. The experiment folder's format (config.json,
data_config.json) lives below this package, in raypipe.tasks.experiment."""

from raypipe.finetune.run import prepare_seed, read_marker, run_finetune
from raypipe.tasks.experiment import Experiment, ExperimentConfig, FinetuneConfig, load_experiment

__all__ = ["Experiment", "ExperimentConfig", "FinetuneConfig", "load_experiment", "prepare_seed", "read_marker",
           "run_finetune"]

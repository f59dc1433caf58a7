"""Spec-driven synthetic datasets. `trigger`: the 2-D trigger classification task (data_config.json -> rows/JSONL);
`templates`: its named prompt-template presets; `experiment`: an experiment folder (config.json + data_config.json)
read once into frozen dataclasses (the task as a `raypipe build` prompt source, `trigger:EXP`, is
raypipe.sources.trigger). Pure Python: importing this package loads no heavy library."""

from raypipe.tasks.experiment import Experiment, ExperimentConfig, FinetuneConfig, load_experiment
from raypipe.tasks.templates import PROMPT_TEMPLATE_PRESETS, list_template_presets
from raypipe.tasks.trigger import TaskSpec, generate_rows, load_spec, twin_prompt, write_datasets

__all__ = ["Experiment", "ExperimentConfig", "FinetuneConfig", "PROMPT_TEMPLATE_PRESETS", "TaskSpec",
           "generate_rows", "list_template_presets", "load_experiment", "load_spec", "twin_prompt", "write_datasets"]

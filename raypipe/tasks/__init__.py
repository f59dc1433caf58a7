"""Spec-driven synthetic datasets. `trigger`: the 2-D trigger classification task (data_config.json -> rows/JSONL);
`templates`: its named prompt-template presets. Pure Python: importing this package loads no heavy library."""

from raypipe.tasks.templates import PROMPT_TEMPLATE_PRESETS, list_template_presets
from raypipe.tasks.trigger import TaskSpec, generate_rows, load_spec, twin_prompt, write_datasets

__all__ = ["PROMPT_TEMPLATE_PRESETS", "TaskSpec", "generate_rows", "list_template_presets", "load_spec",
           "twin_prompt", "write_datasets"]

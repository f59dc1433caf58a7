"""An experiment folder's format, read once: config.json (`ExperimentConfig` with its `FinetuneConfig`, knob
dataclasses declared in raypipe.tasks.config) and data_config.json (`trigger.TaskSpec`), validated together into one
frozen `Experiment`.

config.json is read as a build's config file is (raypipe.knobs): an unknown key names the closest known one, a
wrong type is one line naming the key, and keys starting with '_' are comments. A loaded experiment travels as it is:
to a Ray Tune trial, to every Ray Train worker, to the `trigger:` build source. Checks that need both files (a proxy
that flips nothing in the config's answer mode) run when the two meet, in `Experiment`. This module sits below the
generator's users and the finetune runner.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass
from typing import Any

from raypipe.errors import UserError, read_user_json
from raypipe.knobs import Command, from_mapping
from raypipe.tasks.config import ExperimentConfig, FinetuneConfig
from raypipe.tasks.trigger import TaskSpec, generate_rows

CONFIG, DATA_CONFIG = "config.json", "data_config.json"
CONFIG_FILE = Command("experiment", ExperimentConfig, title="config.json (an experiment folder's)", file=True)
__all__ = ["CONFIG", "DATA_CONFIG", "Experiment", "ExperimentConfig", "FinetuneConfig", "load_experiment",
           "read_config"]


def read_config(data: Any, where: str = CONFIG) -> ExperimentConfig:
    """config.json's parsed JSON as an ExperimentConfig; a mistake is one line naming the file and the key."""
    return from_mapping(CONFIG_FILE, _without_comments(data), where)


def _without_comments(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    return {k: _without_comments(v) for k, v in data.items() if not str(k).startswith("_")}


@dataclass(frozen=True)
class Experiment:
    """Both files of an experiment (or seed) folder, validated together; `folder` is where they were read."""

    config: ExperimentConfig
    spec: TaskSpec
    folder: str = ""

    def __post_init__(self) -> None:
        self.spec.check_mode(self.config.is_categorical)  # a proxy that flips nothing in this mode is refused

    @property
    def seed(self) -> int:
        return self.config.seed

    def label_words(self) -> list[str]:
        return self.spec.label_words(self.config.is_categorical)

    def splits(self) -> dict[str, list[dict]]:
        """Every generated split by file stem (train_<cat>, proxy_<cat>, test_<cat>_ID, test_<cat>_OOD)."""
        return generate_rows(self.spec, self.config.seed, is_categorical=self.config.is_categorical,
                             output_preamble=self.config.output_preamble)

    def finetune_rows(self, splits: dict[str, list[dict]] | None = None) -> dict[str, list[dict]]:
        """{"train": every train/proxy split together, capped at max_dataset_size by a seeded sample kept in file
        order, and each test split by name}."""
        splits = self.splits() if splits is None else splits
        rows = [r for name, split in splits.items() if name.startswith(("train_", "proxy_")) for r in split]
        cap = self.config.max_dataset_size
        if cap is not None and len(rows) > cap:
            keep = sorted(random.Random(self.config.seed).sample(range(len(rows)), cap))
            rows = [rows[i] for i in keep]
        return {"train": rows, **{name: r for name, r in splits.items() if name.startswith("test_")}}

    def with_seed(self, seed: int, folder: str) -> "Experiment":
        """This experiment as seed `seed` in `folder`: the config's seed set, a hub repository id suffixed."""
        finetune = self.config.finetune_config
        if finetune.hub_model_id:
            finetune = dataclasses.replace(finetune, hub_model_id=f"{finetune.hub_model_id}-seed{seed}")
        config = dataclasses.replace(self.config, seed=seed, finetune_config=finetune)
        return dataclasses.replace(self, config=config, folder=folder)


def load_experiment(folder: str) -> Experiment:
    """Both files of an experiment (or seed) folder, read once and validated; UserErrors name the file and field."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such experiment folder")
    config = read_config(read_user_json(os.path.join(folder, CONFIG)))
    spec = TaskSpec.from_dict(read_user_json(os.path.join(folder, DATA_CONFIG)), where=DATA_CONFIG)
    return Experiment(config, spec, os.path.abspath(folder))

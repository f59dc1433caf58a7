"""An experiment folder's format, read once: config.json (`ExperimentConfig` with its `FinetuneConfig`) and
data_config.json (`trigger.TaskSpec`), validated together into one frozen `Experiment`.

The dataclasses are frozen (their few dicts are never changed after loading), so a loaded experiment travels as it is: to a Ray Tune
trial, to every Ray Train worker, to the `trigger:` build source. Keys starting with '_' are comments. Checks that
need both files (a proxy that flips nothing in the config's answer mode) run when the two meet, in `Experiment`.
This module sits below the generator's users and the finetune package: it imports neither.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from raypipe.errors import UserError, read_user_json
from raypipe.tasks.trigger import TaskSpec, generate_rows

CONFIG, DATA_CONFIG = "config.json", "data_config.json"
EMBEDDED_NAMES = ("embedded",)  # plus raypipe.config.EMBEDDED_MODEL_ID
AccuracyMethod = Literal["logits", "generation"]
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class FinetuneConfig:
    """The model and how it is trained: LoRA through peft (is_peft) or full SFT; loss on the answer tokens only."""

    model: str = "embedded"  # "embedded" (SmolLM2-135M-Instruct, shipped), a hub id or a local checkpoint folder
    gpu_model: str | None = None  # used instead of `model` when the run has a GPU; null keeps `model`
    is_peft: bool = True
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: Any = DEFAULT_TARGET_MODULES  # a list of module names, or "all-linear"
    epochs: int = 4
    learning_rate: float = 1e-3
    lr_scheduler: Literal["constant", "linear", "cosine"] = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0: no clipping
    per_device_train_batch_size: int = 8  # rows per worker per micro-batch; a step takes workers x this x accumulation
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    save_checkpoints_to_hub: bool = False  # push every epoch's adapter (or model), then the final folders
    hub_model_id: str | None = None  # needed by save_checkpoints_to_hub; seeds add "-seed<s>"
    hub_private: bool = True
    num_workers: int = 1  # Ray Train workers (data parallel)
    use_gpu: bool | None = None  # None: when the cluster has a GPU
    cpus_per_worker: int | None = None  # None: 1 with a GPU; on CPU the CPUs of the smallest node / num_workers

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise UserError("finetune_config.model: needs a model name, folder or 'embedded'")
        _positive(self, "finetune_config", "r", "lora_alpha", "epochs", "per_device_train_batch_size",
                  "gradient_accumulation_steps", "num_workers")
        for name in ("is_peft", "gradient_checkpointing", "save_checkpoints_to_hub", "hub_private"):
            _boolean(f"finetune_config.{name}", getattr(self, name))
        if self.use_gpu is not None:
            _boolean("finetune_config.use_gpu", self.use_gpu)
        if not (_number(self.learning_rate) and self.learning_rate > 0):
            raise UserError(f"finetune_config.learning_rate: must be positive, got {self.learning_rate!r}")
        if not (_number(self.lora_dropout) and 0 <= self.lora_dropout < 1):
            raise UserError(f"finetune_config.lora_dropout: must be in [0, 1), got {self.lora_dropout!r}")
        for name in ("weight_decay", "max_grad_norm"):
            if not (_number(getattr(self, name)) and getattr(self, name) >= 0):
                raise UserError(f"finetune_config.{name}: must be a number >= 0, got {getattr(self, name)!r}")
        if self.lr_scheduler not in ("constant", "linear", "cosine"):
            raise UserError(f"finetune_config.lr_scheduler: constant, linear or cosine, got {self.lr_scheduler!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UserError(f"finetune_config.dtype: auto, float32, bfloat16 or float16, got {self.dtype!r}")
        modules = self.target_modules
        if not (modules == "all-linear" or (isinstance(modules, (list, tuple)) and modules
                                            and all(isinstance(m, str) and m for m in modules))):
            raise UserError(f"finetune_config.target_modules: a list of module names or \"all-linear\", got "
                            f"{modules!r}")
        if modules != "all-linear":
            object.__setattr__(self, "target_modules", tuple(modules))
        if self.save_checkpoints_to_hub and not self.hub_model_id:
            raise UserError("finetune_config.hub_model_id: save_checkpoints_to_hub needs a repository id "
                            "(user/name)")
        if self.cpus_per_worker is not None:
            _positive(self, "finetune_config", "cpus_per_worker")

    def model_for(self, use_gpu: bool) -> str:
        """The model id this run trains: gpu_model on a GPU when given, else model; 'embedded' resolved."""
        from raypipe.config import EMBEDDED_MODEL_ID

        name = self.gpu_model if use_gpu and self.gpu_model else self.model
        return EMBEDDED_MODEL_ID if name in EMBEDDED_NAMES else name


@dataclass(frozen=True)
class ExperimentConfig:
    """config.json of an experiment (or of one seed folder): the seed's main.py knobs."""

    seed: int = 42
    dataset_format: Literal["jsonl"] = "jsonl"
    max_dataset_size: int | None = 500  # cap on the train rows (all train/proxy files together), seeded sample
    is_categorical: bool = True  # label words; false: True/False answers
    output_preamble: bool = True  # answers read "F(x,T) = <label>"
    n_evals: int = 1  # epochs between accuracy snapshots (the last epoch is always evaluated)
    accuracy_method: AccuracyMethod = "logits"  # label-word log-likelihood, or greedy generation parsed
    use_fast_accuracy: bool = True  # logits: prompt once + candidates on its KV cache; generation: batched
    accuracy_sample_size: int | None = 64  # rows of each test split per snapshot (None: all)
    train_accuracy_sample_size: int | None = 64  # train rows per snapshot (None: all)
    eval_batch_size: int = 16
    wandb_project: str | None = None  # log to W&B (offline without a key)
    finetune_config: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        if isinstance(self.finetune_config, dict):
            object.__setattr__(self, "finetune_config",
                               _from_dict(FinetuneConfig, self.finetune_config, "finetune_config"))
        elif not isinstance(self.finetune_config, FinetuneConfig):
            raise UserError(f"finetune_config: an object of finetune settings, got {self.finetune_config!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise UserError(f"seed: a whole number >= 0, got {self.seed!r}")
        if self.dataset_format != "jsonl":
            raise UserError(f"dataset_format: only \"jsonl\" is supported, got {self.dataset_format!r}")
        if self.accuracy_method not in ("logits", "generation"):
            raise UserError(f"accuracy_method: \"logits\" or \"generation\", got {self.accuracy_method!r}")
        _positive(self, "", "n_evals", "eval_batch_size")
        for name in ("max_dataset_size", "accuracy_sample_size", "train_accuracy_sample_size"):
            if getattr(self, name) is not None:
                _positive(self, "", name)
        for name in ("is_categorical", "output_preamble", "use_fast_accuracy"):
            _boolean(name, getattr(self, name))
        if self.wandb_project is not None and not (isinstance(self.wandb_project, str) and self.wandb_project):
            raise UserError(f"wandb_project: a project name or null, got {self.wandb_project!r}")

    @classmethod
    def from_dict(cls, data: dict, where: str = CONFIG) -> "ExperimentConfig":
        try:
            return _from_dict(cls, data, "")
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None

    def to_dict(self) -> dict:
        """JSON-ready (tuples as lists): what a seed folder's config.json holds."""
        def plain(value):
            return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

        return {k: {kk: plain(vv) for kk, vv in v.items()} if isinstance(v, dict) else plain(v)
                for k, v in dataclasses.asdict(self).items()}


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
    config = ExperimentConfig.from_dict(read_user_json(os.path.join(folder, CONFIG)), where=CONFIG)
    spec = TaskSpec.from_dict(read_user_json(os.path.join(folder, DATA_CONFIG)), where=DATA_CONFIG)
    return Experiment(config, spec, os.path.abspath(folder))


def _positive(obj, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{prefix + '.' if prefix else ''}{name}: a whole number >= 1, got {value!r}")


def _boolean(name: str, value) -> None:
    if not isinstance(value, bool):
        raise UserError(f"{name}: true or false, got {value!r}")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _from_dict(cls, data, where: str):
    if not isinstance(data, dict):
        raise UserError(f"{where or 'config'}: must be a JSON object, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{where + ': ' if where else ''}unknown field(s) {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(known))}")
    try:
        return cls(**data)
    except TypeError as exc:  # a wrong type that a comparison tripped over
        raise UserError(f"{where + ': ' if where else ''}{exc}") from None

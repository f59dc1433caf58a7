"""An experiment's config.json as dataclasses: the seed's knobs (seed, sizes, answer format, evaluation) and its
`finetune_config` (model, LoRA or full SFT, optimisation, resources, hub). Keys starting with '_' are comments."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from raypipe.errors import UserError, read_user_json

EMBEDDED_NAMES = ("embedded",)  # plus raypipe.config.EMBEDDED_MODEL_ID
AccuracyMethod = Literal["logits", "generation"]
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass
class FinetuneConfig:
    """The model and how it is trained: LoRA through peft (is_peft) or full SFT; loss on the answer tokens only."""

    model: str = "embedded"  # "embedded" (SmolLM2-135M-Instruct, shipped), a hub id or a local checkpoint folder
    gpu_model: str | None = None  # used instead of `model` when the run has a GPU; null keeps `model`
    is_peft: bool = True
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: Any = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))  # a list, or "all-linear"
    epochs: int = 4
    learning_rate: float = 1e-3
    lr_scheduler: Literal["constant", "linear", "cosine"] = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    save_checkpoints_to_hub: bool = False  # push the adapter (or model) and the merged model when training ends
    hub_model_id: str | None = None  # needed by save_checkpoints_to_hub; seeds add "-seed<s>"
    hub_private: bool = True
    num_workers: int = 1  # Ray Train workers (data parallel)
    use_gpu: bool | None = None  # None: when the cluster has a GPU
    cpus_per_worker: int | None = None  # None: 1 with a GPU; on CPU the CPUs of the smallest node / num_workers

    def __post_init__(self) -> None:
        for name in ("model",):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise UserError(f"finetune_config.{name}: needs a model name, folder or 'embedded'")
        _positive(self, "finetune_config", "r", "lora_alpha", "epochs", "per_device_train_batch_size",
                  "gradient_accumulation_steps", "num_workers")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise UserError(f"finetune_config.learning_rate: must be positive, got {self.learning_rate!r}")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"finetune_config.lora_dropout: must be in [0, 1), got {self.lora_dropout!r}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise UserError("finetune_config.weight_decay and max_grad_norm must be >= 0")
        if self.lr_scheduler not in ("constant", "linear", "cosine"):
            raise UserError(f"finetune_config.lr_scheduler: constant, linear or cosine, got {self.lr_scheduler!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UserError(f"finetune_config.dtype: auto, float32, bfloat16 or float16, got {self.dtype!r}")
        modules = self.target_modules
        if not (modules == "all-linear" or (isinstance(modules, list) and modules
                                            and all(isinstance(m, str) and m for m in modules))):
            raise UserError(f"finetune_config.target_modules: a list of module names or \"all-linear\", got "
                            f"{modules!r}")
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


@dataclass
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
            self.finetune_config = _from_dict(FinetuneConfig, self.finetune_config, "finetune_config")
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
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name}: true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict, where: str = "config.json") -> "ExperimentConfig":
        try:
            return _from_dict(cls, data, "")
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _positive(obj, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{prefix + '.' if prefix else ''}{name}: a whole number >= 1, got {value!r}")


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


def load_config(path_or_dir: str) -> ExperimentConfig:
    """An ExperimentConfig from config.json (or the folder holding it); errors name the file and field."""
    path = os.path.join(path_or_dir, "config.json") if os.path.isdir(path_or_dir) else path_or_dir
    return ExperimentConfig.from_dict(read_user_json(path), where=os.path.basename(path))

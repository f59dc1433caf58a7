"""An experiment's knobs, each declared once with `knob` like the build's (raypipe/config.py): config.json of an
experiment folder (`ExperimentConfig`, with its `FinetuneConfig`).

raypipe.tasks.experiment reads an experiment folder with them through raypipe.knobs (an unknown key or a wrong type is
refused as in a build's config file); raypipe.options lists config.json's keys for the docs' tables. The dataclasses
are frozen: a loaded experiment travels as it is to a Ray Tune trial, every Ray Train worker and the `trigger:` build
source.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from raypipe.config import EMBEDDED_MODEL_ID, Dtype, check_choices, knob
from raypipe.errors import UserError

EMBEDDED_NAMES = ("embedded",)  # plus raypipe.config.EMBEDDED_MODEL_ID
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
AccuracyMethod = Literal["logits", "generation"]
Scheduler = Literal["constant", "linear", "cosine"]
SECTION = "finetune_config."  # where FinetuneConfig sits in config.json: its messages name keys below it


def at_least(config: object, minimum: int, *names: str, prefix: str = "") -> None:
    """Each named field (None aside) is at least `minimum`; a message names it after `prefix`."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise UserError(f"{prefix}{name} must be at least {minimum}, got {value}")


@dataclass(frozen=True)
class FinetuneConfig:
    """The model and how it is trained: LoRA through peft (is_peft) or full SFT; loss on the answer tokens only."""

    model: str = knob("embedded", "`embedded` (SmolLM2-135M-Instruct, shipped with raypipe), a hub id, or a local "
                                  "checkpoint folder; remote model code is never trusted.")
    gpu_model: str | None = knob(None, "Trained instead of `model` when the run has a GPU (the templates name "
                                       "SmolLM2-1.7B-Instruct); null keeps `model`.")
    is_peft: bool = knob(True, "LoRA through peft; false: full SFT (every weight trained).")
    r: int = knob(8, "LoRA rank.")
    lora_alpha: int = knob(16, "LoRA scale.")
    lora_dropout: float = knob(0.05, "LoRA dropout, in [0, 1).")
    target_modules: str | tuple[str, ...] = knob(DEFAULT_TARGET_MODULES, "The modules LoRA adapts (a list of names), "
                                                                         "or `all-linear`.")
    epochs: int = knob(4, "Passes over the train rows.")
    learning_rate: float = knob(1e-3, "AdamW's learning rate.")
    lr_scheduler: Scheduler = knob("linear", "linear (to zero at the last step), cosine, or constant.")
    weight_decay: float = knob(0.0, "AdamW's weight decay.")
    max_grad_norm: float = knob(1.0, "Gradient clipping at this norm; 0: none.")
    per_device_train_batch_size: int = knob(8, "Rows per worker per micro-batch.")
    gradient_accumulation_steps: int = knob(1, "Micro-batches per optimizer step; a step takes num_workers x "
                                               "per_device_train_batch_size x gradient_accumulation_steps rows.")
    gradient_checkpointing: bool = knob(False, "Recompute activations in the backward pass (less memory, more "
                                               "time; the same result).")
    dtype: Dtype = knob("auto", "The training dtype: auto is float32 on CPU and bfloat16 on a GPU that has it.")
    save_checkpoints_to_hub: bool = knob(False, "Push every epoch to the hub, then the final folder (see The hub, "
                                                "below).")
    hub_model_id: str | None = knob(None, "The hub repository (`user/name`), needed by save_checkpoints_to_hub; "
                                          "each seed's folder gets `<id>-seed<s>`.")
    hub_private: bool = knob(True, "Create the hub repository private.")
    num_workers: int = knob(1, "Ray Train workers (data parallel; gloo on CPU, NCCL on GPUs).")
    use_gpu: bool | None = knob(None, "Train on GPUs; null: when the cluster has one (`raypipe finetune "
                                      "--gpu/--no-gpu` overrides it).")
    cpus_per_worker: int | None = knob(None, "CPUs (and torch threads on CPU) per worker; null: 1 with a GPU, else "
                                             "the CPUs of the smallest node divided by num_workers.")

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise UserError(f"{SECTION}model must name a model: 'embedded', a hub id or a folder")
        at_least(self, 1, "r", "lora_alpha", "epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                  "num_workers", "cpus_per_worker", prefix=SECTION)
        check_choices(self, SECTION)
        if self.learning_rate <= 0:
            raise UserError(f"{SECTION}learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"{SECTION}lora_dropout must be in [0, 1), got {self.lora_dropout}")
        for name in ("weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise UserError(f"{SECTION}{name} must be >= 0, got {getattr(self, name)}")
        modules = self.target_modules
        if modules != "all-linear":
            if isinstance(modules, str) or not modules or not all(isinstance(m, str) and m for m in modules):
                raise UserError(f"{SECTION}target_modules must be a list of module names or 'all-linear', got "
                                f"{modules!r}")
            object.__setattr__(self, "target_modules", tuple(modules))  # frozen all the way down
        if self.save_checkpoints_to_hub and not self.hub_model_id:
            raise UserError(f"{SECTION}save_checkpoints_to_hub needs {SECTION}hub_model_id (a repository id, "
                            "user/name)")

    def model_for(self, use_gpu: bool) -> str:
        """The model id this run trains: gpu_model on a GPU when given, else model; 'embedded' resolved."""
        name = self.gpu_model if use_gpu and self.gpu_model else self.model
        return EMBEDDED_MODEL_ID if name in EMBEDDED_NAMES else name


@dataclass(frozen=True)
class ExperimentConfig:
    """config.json of an experiment (or of one seed folder): the seed's main.py knobs."""

    seed: int = knob(42, "The seed of the data (points, triggers, paraphrases), the train-row cap's sample, the "
                         "evaluation samples, batch order, dropout and LoRA initialisation; `raypipe finetune "
                         "--seeds` sets it per seed folder.")
    dataset_format: Literal["jsonl"] = knob("jsonl", "The only format (the seed's).")
    max_dataset_size: int | None = knob(500, "Cap on the train rows (all `train_*` and `proxy_*` files together): a "
                                             "seeded sample, kept in file order; null: no cap.")
    is_categorical: bool = knob(True, "Answers are label words; false: boolean mode, answers True / False.")
    output_preamble: bool = knob(True, "Answers read `F(x,T) = <label>`; false: the label alone.")
    n_evals: int = knob(1, "Epochs between accuracy snapshots; epoch 0 (before training) and the last epoch are "
                           "always evaluated.")
    accuracy_method: AccuracyMethod = knob("logits", "logits: every candidate answer (each label word, after the "
                                                     "preamble, with the end-of-turn token) scored by the summed "
                                                     "log-probability of its tokens, the best one predicted; "
                                                     "generation: greedy decoding, the label word parsed from the "
                                                     "text (an answer that names none is counted as unparsed and "
                                                     "wrong).")
    use_fast_accuracy: bool = knob(True, "logits: the prompt and the candidates' shared prefix once, each "
                                         "candidate's tail on a copy of its KV cache; false: one forward per "
                                         "(prompt, candidate), the reference. generation: batched; false: one "
                                         "prompt at a time. Both paths give the same predictions.")
    accuracy_sample_size: int | None = knob(64, "Rows of each test split scored at each snapshot, a fixed seeded "
                                                "sample (the same rows every snapshot); null: all.")
    train_accuracy_sample_size: int | None = knob(64, "Train rows scored at each snapshot, likewise; null: all.")
    eval_batch_size: int = knob(16, "Prompts per scoring batch.")
    wandb_project: str | None = knob(None, "Log every epoch to this W&B project: online with WANDB_API_KEY "
                                           "(environment or .env), else offline under the results folder; the key "
                                           "is never printed or saved.")
    finetune_config: FinetuneConfig = knob(help="The model and its training.", factory=FinetuneConfig)

    def __post_init__(self) -> None:
        at_least(self, 0, "seed")
        at_least(self, 1, "n_evals", "eval_batch_size", "max_dataset_size", "accuracy_sample_size",
                  "train_accuracy_sample_size")
        check_choices(self, "")
        if self.wandb_project is not None and not self.wandb_project.strip():
            raise UserError(f"wandb_project must be a project name or null, got {self.wandb_project!r}")

    def to_dict(self) -> dict:
        """JSON-ready (tuples as lists): what a seed folder's config.json holds."""
        def plain(value):
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

        return plain(dataclasses.asdict(self))

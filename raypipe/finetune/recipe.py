"""The finetune recipe (torchtune-style: setup, train_epoch, evaluate, save) and its Ray Train worker loop.

The driver hands every worker one frozen `FinetuneJob` (the experiment as read once, and what the driver decided:
results folder, model, device, CPUs); each worker generates the rows from it. Each epoch ends in a Ray Train
checkpoint (checkpoint.py: safetensors + JSON); a worker that starts with one continues after its epoch. Every
worker runs the same micro-batches per step (steps.py), so two workers train like one on the whole step. Rank 0
evaluates, logs (logs/worker_0.txt), pushes each epoch to the hub when asked, and writes the results folder:
training_history.json (every epoch), and at the end final_full_accuracy.json, the three plots, adapter/ (LoRA,
safetensors) and merged/ (a plain causal-LM folder `raypipe build --model-id` loads).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any

from raypipe.config import torch_dtype
from raypipe.embedded import resolve_model_path
from raypipe.finetune import accuracy as acc
from raypipe.finetune import plots, steps
from raypipe.finetune.checkpoint import atomic_folder, restore_state, save_state
from raypipe.finetune.data import ChatFormat, answer_loss, answer_tokens, collate
from raypipe.finetune.hub import HubRepo
from raypipe.finetune.logs import open_log
from raypipe.fs import Location
from raypipe.tasks.experiment import Experiment
from raypipe.tasks.trigger import split_kind
from raypipe.tracking import tracker

KINDS = ("train", "ID", "OOD")


@dataclass(frozen=True)
class FinetuneJob:
    """One seed's run as the driver decided it; travels to every Ray Train worker as it is."""

    experiment: Experiment
    results_dir: str
    model_id: str  # resolved: gpu_model on a GPU when given, 'embedded' as the embedded checkpoint's id
    use_gpu: bool
    cpus_per_worker: int
    run_name: str
    dotenv: str | None = None  # the driver's .env (W&B key, hub token and endpoint), read by the worker


class FinetuneRecipe:
    """One seed's finetune on one Ray Train worker."""

    def __init__(self, job: FinetuneJob):
        self.job = job
        self.config = job.experiment.config
        self.ft = self.config.finetune_config
        self.results_dir = job.results_dir
        self.epoch = 0  # the last finished epoch
        self.history: list[dict] = []
        self.resumed_from: list[int] = []
        self.wandb_id: str | None = None
        self.hub = None

    # --- setup -----------------------------------------------------------------------------------------------------

    def setup(self, checkpoint=None) -> None:
        import ray.train
        import ray.train.torch
        import torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.log = open_log(self.results_dir, f"worker_{self.rank}")
        if not self.job.use_gpu:
            torch.set_num_threads(self.job.cpus_per_worker)
        torch.manual_seed(self.config.seed)
        self.device = ray.train.torch.get_device()
        self._load_model()
        self._load_data()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=self.ft.learning_rate, weight_decay=self.ft.weight_decay)
        self.steps_per_epoch = steps.steps_per_epoch(len(self.encoded), self.world, self.ft.per_device_train_batch_size,
                                                     self.ft.gradient_accumulation_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        if checkpoint is not None:

            with checkpoint.as_directory() as folder:
                meta = restore_state(folder, self.model, self.optimizer, self.scheduler, self.device)
            self.epoch, self.history, self.wandb_id = meta["epoch"], meta["history"], meta["wandb_id"]
            self.resumed_from = meta["resumed_from"] + [self.epoch]
        self.module = self.model  # the un-wrapped model: evaluation and saving
        if self.world > 1:
            self.model = ray.train.torch.prepare_model(self.model, move_to_device=False)
        self.log.info(f"worker {self.rank}/{self.world}: {self.job.model_id} on {self.device}, "
                      f"{'LoRA' if self.ft.is_peft else 'full SFT'}, {self.trainable_parameters:,} of "
                      f"{self.total_parameters:,} parameters trained; {len(self.encoded)} train rows, "
                      f"{self.steps_per_epoch} steps per epoch" +
                      (f"; resumed after epoch {self.epoch}" if checkpoint is not None else ""))
        self.run, self.wandb_info = (None, None)
        if self.rank == 0:

            self.run, self.wandb_info = tracker({**self.config.to_dict(), "_dotenv": self.job.dotenv},
                                                self.results_dir, name=self.job.run_name, run_id=self.wandb_id)
            self.wandb_id = self.run.id
            if self.ft.save_checkpoints_to_hub:

                self.hub = HubRepo(self.ft.hub_model_id, private=self.ft.hub_private, dotenv=self.job.dotenv)
                self.log.info(f"hub: pushing every epoch to {self.hub.url}")

    def _load_model(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        path = resolve_model_path(self.job.model_id)
        dtype = self.ft.dtype
        if dtype == "auto":
            dtype = "bfloat16" if self.job.use_gpu and torch.cuda.is_bf16_supported() else "float32"
        self.dtype = dtype  # what the weights train in, recorded in final_full_accuracy.json
        base_config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        self.base_dtype = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        self.fmt = ChatFormat(self.tokenizer)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype), trust_remote_code=False)
        if self.ft.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()  # LoRA: the frozen embeddings must still pass gradients on
        if self.ft.is_peft:
            from peft import LoraConfig, get_peft_model

            modules = self.ft.target_modules
            model = get_peft_model(model, LoraConfig(
                r=self.ft.r, lora_alpha=self.ft.lora_alpha, lora_dropout=self.ft.lora_dropout,
                target_modules=modules if modules == "all-linear" else list(modules), task_type="CAUSAL_LM"))
        self.model = model.to(self.device)
        self.trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.total_parameters = sum(p.numel() for p in model.parameters())

    def _load_data(self) -> None:
        rows = self.job.experiment.finetune_rows()
        self.train_rows = rows.pop("train")
        self.test_rows = rows
        self.words = self.job.experiment.label_words()
        self.encoded = [self.fmt.encode(r) for r in self.train_rows]
        self.answer_tokens = [answer_tokens(e) for e in self.encoded]
        # Fixed evaluation samples: every snapshot scores the same rows, so the curves compare like with like.
        rng = random.Random(self.config.seed)
        self.snapshot_rows = {"train": _sample(self.train_rows, self.config.train_accuracy_sample_size, rng)}
        for name, split_rows in self.test_rows.items():
            self.snapshot_rows[name] = _sample(split_rows, self.config.accuracy_sample_size, rng)

    def _lr_factor(self, step: int) -> float:
        total = max(1, self.steps_per_epoch * self.ft.epochs)
        if self.ft.lr_scheduler == "linear":
            return max(0.0, 1 - step / total)
        if self.ft.lr_scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        return 1.0

    # --- one epoch -------------------------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the epoch's steps (steps.py); the loss is the mean over steps of each step's mean over its
        answer tokens, on all ranks together."""
        import torch

        torch.manual_seed(self.config.seed * 100003 + epoch)  # dropout: the same on a resumed run
        self.model.train()
        order = steps.epoch_order(len(self.encoded), self.config.seed, epoch)
        size, accumulate = self.ft.per_device_train_batch_size, self.ft.gradient_accumulation_steps
        plan = steps.rank_plan(order, self.world, self.rank, size, accumulate)
        all_rows = steps.step_rows(order, self.world, size, accumulate)
        step_losses = torch.zeros(len(plan), dtype=torch.float64)
        grad_norms: list[float] = []  # each step's gradient norm before clipping (after DDP's all-reduce: equal)
        # max_grad_norm 0 clips nothing: an infinite bound leaves the gradient as it is and still measures it.
        bound = self.ft.max_grad_norm or math.inf
        tokens, micro_batches, start, started_at = 0, 0, time.perf_counter(), time.time()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        for index, (micro, rows) in enumerate(zip(plan, all_rows)):
            step_tokens = sum(self.answer_tokens[i] for i in rows)
            for j, batch_rows in enumerate(micro):
                batch = collate([self.encoded[i] for i in batch_rows.rows], self.fmt.pad_id,
                                [batch_rows.weight] * len(batch_rows.rows))
                tokens += int(batch["attention_mask"].sum()) * batch_rows.weight
                batch = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()}
                # DDP all-reduces on the step's last micro-batch only; it averages over ranks, hence x world.
                last = j == len(micro) - 1
                with contextlib.nullcontext() if last or self.world == 1 else self.model.no_sync():
                    loss_sum = answer_loss(self.model, batch, reduction="sum")
                    (loss_sum * (self.world / step_tokens)).backward()
                step_losses[index] += loss_sum.item() / step_tokens
                micro_batches += 1
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(trainable, bound)))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        per_rank = [micro_batches]
        if self.world > 1:  # the step losses and tokens of all ranks, and each rank's micro-batch count
            import torch.distributed as dist

            totals = torch.cat([step_losses, torch.tensor([float(tokens)], dtype=torch.float64)]).to(self.device)
            dist.all_reduce(totals)  # on the device: NCCL reduces CUDA tensors only
            step_losses, tokens = totals[:-1].cpu(), int(totals[-1])
            counts = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world)]
            dist.all_gather(counts, torch.tensor([micro_batches], device=self.device))
            per_rank = [int(c) for c in counts]
        return {"epoch": epoch, "loss": float(step_losses.mean()), "step_losses": step_losses.tolist(),
                "grad_norms": grad_norms, "clipped_steps": sum(n > bound for n in grad_norms),
                "micro_batches_per_rank": per_rank, "train_tokens": tokens, "train_seconds": seconds,
                "tokens_per_s": tokens / max(seconds, 1e-9), "lr": self.scheduler.get_last_lr()[0],
                "started_at": started_at, "ended_at": time.time()}

    def evaluate(self, rows_by_split: dict[str, list[dict]]) -> dict:
        """Accuracy per split and per kind (train, ID, OOD) on the given rows, with each row's prediction;
        generation answers that name no label word are counted (`unparsed`), never dropped."""
        import torch

        self.module.eval()
        start = time.perf_counter()
        result: dict[str, Any] = {"splits": {}, "accuracy": {}, "p_true": {}, "predictions": {}}
        pooled: dict[str, list] = {k: [] for k in KINDS}
        with torch.no_grad():
            for name, rows in rows_by_split.items():
                if not rows:
                    continue
                out = acc.predict(self.module, self.fmt, rows, self.words, method=self.config.accuracy_method,
                                  fast=self.config.use_fast_accuracy, output_preamble=self.config.output_preamble,
                                  batch_size=self.config.eval_batch_size)
                kind = "train" if name == "train" else split_kind(name)
                result["splits"][name] = {"accuracy": acc.accuracy(rows, out["prediction"]), "n": len(rows),
                                          "kind": kind, "unparsed": sum(p is None for p in out["prediction"])}
                result["predictions"][name] = out["prediction"]
                pooled[kind] += list(zip(rows, out["prediction"], out["p_true"] or [None] * len(rows)))
        for kind, items in pooled.items():
            result["accuracy"][kind] = (sum(r["label"] == p for r, p, _ in items) / len(items)) if items else None
            if items and items[0][2] is not None:
                result["p_true"][kind] = [q for _, _, q in items]
        result["eval_seconds"] = time.perf_counter() - start
        self.module.train()
        return result

    def evaluation_entry(self, epoch: int, train: dict | None) -> dict:
        """The history entry of an epoch: its training numbers and, when due (epoch 0, every n_evals epochs, the
        last), the snapshot accuracy with the rows each split was scored on."""
        entry = dict(train or {"epoch": epoch, "loss": None})
        due = epoch == 0 or epoch % self.config.n_evals == 0 or epoch == self.ft.epochs
        if due and self.rank == 0:
            result = self.evaluate(self.snapshot_rows)
            entry["accuracy"] = {**result["accuracy"],
                                 **{name: s["accuracy"] for name, s in result["splits"].items() if name != "train"}}
            entry["eval_rows"] = {name: s["n"] for name, s in result["splits"].items()}
            entry["eval_seconds"] = result["eval_seconds"]
        return entry

    # --- checkpoints -----------------------------------------------------------------------------------------------

    def report(self, metrics: dict) -> None:
        """Record the epoch (history, log, W&B, hub) and hand Ray Train a checkpoint of it (rank 0 writes it)."""
        import ray.train

        self.epoch = metrics["epoch"]
        flat = {k: v for k, v in _flat(metrics).items() if v is not None and not isinstance(v, list)}
        if self.rank != 0:
            ray.train.report(flat)
            return
        self.history.append(metrics)
        self._write_json("training_history.json", self._history_json())
        self.run.log(flat, step=self.epoch)
        self.log.info(_epoch_line(metrics, self.ft.epochs))
        if self.hub is not None:  # before the checkpoint: a failed push reruns this epoch on resume
            self._push_epoch()

        folder = tempfile.mkdtemp(prefix="raypipe-ft-ckpt-")
        try:
            save_state(folder, self.module, self.optimizer, self.scheduler,
                       {"epoch": self.epoch, "history": self.history, "resumed_from": self.resumed_from,
                        "wandb_id": self.wandb_id, "results_dir": self.results_dir})
            ray.train.report(flat, checkpoint=ray.train.Checkpoint.from_directory(folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _push_epoch(self) -> None:
        folder = tempfile.mkdtemp(prefix="raypipe-ft-hub-")
        try:
            self.module.save_pretrained(folder, safe_serialization=True)
            if not self.ft.is_peft:
                self.tokenizer.save_pretrained(folder)
            url = self.hub.push(folder, f"epoch {self.epoch}/{self.ft.epochs}")
            self.log.info(f"hub: pushed epoch {self.epoch} ({url})")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # --- the end ---------------------------------------------------------------------------------------------------

    def save(self) -> dict | None:
        """Rank 0: final full accuracy, plots, adapter and merged checkpoints, hub push; returns the accuracy."""
        if self.rank != 0:
            return None

        rows = {"train": self.train_rows, **self.test_rows}
        final = self.evaluate(rows)
        gradient_checkpointing = bool(getattr(self.module, "is_gradient_checkpointing", False))
        summary = {"epochs": self.epoch, "accuracy_method": self.config.accuracy_method,
                   "accuracy": final["accuracy"], "splits": final["splits"],
                   "per_trigger": _per_trigger(rows, final["predictions"]), "label_words": self.words,
                   "chance": 1 / len(self.words), "resumed_from": self.resumed_from, "wandb": self.wandb_info,
                   "model": self.job.model_id, "seed": self.config.seed, "workers": self.world,
                   "trainable_parameters": self.trainable_parameters, "total_parameters": self.total_parameters,
                   "gradient_checkpointing": gradient_checkpointing, "dtype": self.dtype,
                   "max_grad_norm": self.ft.max_grad_norm}
        self._write_json("final_full_accuracy.json", summary)
        self._write_json("training_history.json", self._history_json())
        plots.save_png(self.results_dir, "loss_curve.png", plots.loss_curve_figure(self.history))
        plots.save_png(self.results_dir, "accuracy_curve.png",
                       plots.accuracy_curve_figure(self.history, 1 / len(self.words)))
        plots.save_png(self.results_dir, "accuracy_histogram.png", plots.accuracy_histogram_figure(final))
        self._save_models()
        if self.hub is not None:  # the seed pushes the adapter (the model itself for full SFT)
            folder = os.path.join(self.results_dir, "adapter" if self.ft.is_peft else "merged")
            summary["hub"] = {"url": self.hub.url, "final_commit": self.hub.push(folder, "final")}
            self._write_json("final_full_accuracy.json", summary)
        self.log.info("final accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in final["accuracy"].items()
                                                    if v is not None))
        self.run.summary.update({f"final/{k}": v for k, v in final["accuracy"].items() if v is not None})
        self.run.finish()
        return summary

    def _save_models(self) -> None:
        """adapter/ (peft's safetensors adapter) and merged/ (base + adapter, in the base checkpoint's dtype)."""
        import torch

        model = self.module
        if self.ft.is_peft:
            atomic_folder(os.path.join(self.results_dir, "adapter"),
                           lambda tmp: model.save_pretrained(tmp, safe_serialization=True))
            model = model.merge_and_unload()
        dtype = self.base_dtype if isinstance(self.base_dtype, torch.dtype) else (
            torch_dtype(self.base_dtype) if isinstance(self.base_dtype, str) else torch.float32)
        model = model.to("cpu", dtype=dtype)
        if self.ft.gradient_checkpointing:
            model.gradient_checkpointing_disable()

        def write(tmp: str) -> None:
            model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)

        atomic_folder(os.path.join(self.results_dir, "merged"), write)

    def _history_json(self) -> dict:
        return {"epochs": self.ft.epochs, "history": self.history, "resumed_from": self.resumed_from}

    def _write_json(self, name: str, data) -> None:
        Location(self.results_dir).write_json(name, data, indent=2)


def _sample(rows: list[dict], size: int | None, rng: random.Random) -> list[dict]:
    return list(rows) if size is None or size >= len(rows) else rng.sample(rows, size)


def _per_trigger(rows: dict[str, list[dict]], predictions: dict[str, list]) -> dict[str, dict]:
    """Final accuracy per (kind, trigger): 'ID:cup', 'OOD:cat', 'train:dog'."""
    by_trigger: dict[str, dict] = {}
    for name, split_rows in rows.items():
        kind = "train" if name == "train" else split_kind(name)
        for row, prediction in zip(split_rows, predictions.get(name, [])):
            entry = by_trigger.setdefault(f"{kind}:{row['trigger']}", {
                "trigger": row["trigger"], "is_ood": row["is_ood"], "is_proxy": row["is_proxy"], "correct": 0, "n": 0})
            entry["correct"] += prediction == row["label"]
            entry["n"] += 1
    for entry in by_trigger.values():
        entry["accuracy"] = entry.pop("correct") / entry["n"]
    return by_trigger


def _flat(metrics: dict) -> dict:
    """History entry -> flat scalars (for W&B and Ray): accuracy/ID, accuracy/test_objects_ID, ..."""
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    for key, value in (metrics.get("accuracy") or {}).items():
        flat[f"accuracy/{key}"] = value
    return flat


def _epoch_line(metrics: dict, epochs: int) -> str:
    line = f"epoch {metrics['epoch']}/{epochs}"
    if metrics.get("loss") is not None:
        line += f": loss {metrics['loss']:.4f}, {metrics['tokens_per_s']:.0f} tokens/s"
    accuracy = {k: v for k, v in (metrics.get("accuracy") or {}).items() if k in KINDS and v is not None}
    if accuracy:
        line += "; accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
    return line


def train_loop_per_worker(config: dict) -> None:
    """Runs on each Ray Train worker: resume from the latest checkpoint if any, train, evaluate, save."""
    import ray.train

    recipe = FinetuneRecipe(config["job"])
    try:
        recipe.setup(ray.train.get_checkpoint())
        if recipe.epoch == 0 and not recipe.history and recipe.rank == 0:  # the curves' first point: untrained
            recipe.history.append(recipe.evaluation_entry(0, None))
            recipe.log.info(_epoch_line(recipe.history[0], recipe.ft.epochs))
        for epoch in range(recipe.epoch + 1, recipe.ft.epochs + 1):
            recipe.report(recipe.evaluation_entry(epoch, recipe.train_epoch(epoch)))
        recipe.save()
    except BaseException:
        if getattr(recipe, "log", None) is not None:
            recipe.log.error("failed:\n" + traceback.format_exc())
        raise

"""The finetune recipe (torchtune-style: setup, train_epoch, evaluate, save) and its Ray Train worker loop.

Each epoch ends in a Ray Train checkpoint (trainable weights, optimizer, scheduler, history: safetensors + JSON);
a worker that starts with a checkpoint continues after its epoch. Every epoch's batches come from a generator
seeded by (seed, epoch), so a resumed run sees the batches an uninterrupted one would. Rank 0 evaluates and writes
into the run's results folder: training_history.json (every epoch), and at the end final_full_accuracy.json, the
three plots, adapter/ (LoRA, safetensors) and merged/ (a plain causal-LM folder `raypipe build --model-id` loads).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from typing import Any

from raypipe.finetune import accuracy as acc
from raypipe.finetune.data import ChatFormat, answer_loss, collate
from raypipe.tasks.trigger import split_kind

KINDS = ("train", "ID", "OOD")


class FinetuneRecipe:
    """One seed's finetune on one Ray Train worker; `config` is the loop config the driver built (JSON-able)."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.ft = config["finetune_config"]
        self.results_dir = config["_results_dir"]
        self.epoch = 0  # the last finished epoch
        self.history: list[dict] = []
        self.resumed_from: list[int] = []
        self.wandb_id: str | None = None

    # --- setup -----------------------------------------------------------------------------------------------------

    def setup(self, checkpoint=None) -> None:
        import ray.train
        import ray.train.torch
        import torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.use_gpu = bool(self.config["_use_gpu"])
        if not self.use_gpu and self.config.get("_cpus_per_worker"):
            torch.set_num_threads(int(self.config["_cpus_per_worker"]))
        torch.manual_seed(self.config["seed"])
        self.device = ray.train.torch.get_device()
        self._load_model()
        self._load_data()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=self.ft["learning_rate"], weight_decay=self.ft["weight_decay"])
        self.steps_per_epoch = math.ceil(math.ceil(len(self.local_order(1)) / self.ft["per_device_train_batch_size"])
                                         / self.ft["gradient_accumulation_steps"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                self._restore(folder)
        self.module = self.model  # the un-wrapped model: evaluation and saving
        if self.world > 1:
            self.model = ray.train.torch.prepare_model(self.model, move_to_device=False)
        self.run, self.wandb_info = (None, None)
        if self.rank == 0:
            from raypipe.tracking import tracker

            safe = {k: v for k, v in self.config.items() if not k.startswith("_") and k != "rows"}
            self.run, self.wandb_info = tracker({**safe, "_dotenv": self.config.get("_dotenv")}, self.results_dir,
                                                name=self.config["_run_name"], run_id=self.wandb_id)
            self.wandb_id = self.run.id

    def _load_model(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from raypipe.embedded import resolve_model_path

        path = resolve_model_path(self.config["_model_id"])
        dtype = self.ft["dtype"]
        if dtype == "auto":
            dtype = "bfloat16" if self.use_gpu and torch.cuda.is_bf16_supported() else "float32"
        base_config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        self.base_dtype = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        self.fmt = ChatFormat(self.tokenizer)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), trust_remote_code=False)
        if self.ft["gradient_checkpointing"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()  # LoRA: the frozen embeddings must still pass gradients on
        if self.ft["is_peft"]:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(
                r=self.ft["r"], lora_alpha=self.ft["lora_alpha"], lora_dropout=self.ft["lora_dropout"],
                target_modules=self.ft["target_modules"], task_type="CAUSAL_LM"))
        self.model = model.to(self.device)

    def _load_data(self) -> None:
        rows = self.config["rows"]
        self.train_rows = rows["train"]
        self.test_rows = {name: r for name, r in rows.items() if name != "train"}
        self.words = self.config["_label_words"]
        self.encoded = [self.fmt.encode(r) for r in self.train_rows]
        # Fixed evaluation samples: every snapshot scores the same rows, so the curves compare like with like.
        rng = random.Random(self.config["seed"])
        self.snapshot_rows = {"train": _sample(self.train_rows, self.config["train_accuracy_sample_size"], rng)}
        for name, split_rows in self.test_rows.items():
            self.snapshot_rows[name] = _sample(split_rows, self.config["accuracy_sample_size"], rng)

    def local_order(self, epoch: int) -> list[int]:
        """This rank's rows for an epoch: a permutation seeded by (seed, epoch), dealt round-robin to the ranks."""
        import torch

        generator = torch.Generator().manual_seed(self.config["seed"] * 100003 + epoch)
        order = torch.randperm(len(self.encoded), generator=generator).tolist()
        return order[self.rank::self.world]

    def _lr_factor(self, step: int) -> float:
        total = max(1, self.steps_per_epoch * self.ft["epochs"])
        if self.ft["lr_scheduler"] == "linear":
            return max(0.0, 1 - step / total)
        if self.ft["lr_scheduler"] == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        return 1.0

    # --- one epoch -------------------------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict:
        """One pass over this rank's rows; mean loss over the epoch's optimizer steps, tokens and seconds."""
        import torch

        torch.manual_seed(self.config["seed"] * 100003 + epoch)  # dropout: the same on a resumed run
        self.model.train()
        order = self.local_order(epoch)
        size, accumulate = self.ft["per_device_train_batch_size"], self.ft["gradient_accumulation_steps"]
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        losses, tokens, start, started_at = [], 0, time.perf_counter(), time.time()
        for index, rows in enumerate(batches):
            batch = collate([self.encoded[i] for i in rows], self.fmt.pad_id)
            tokens += int(batch["attention_mask"].sum())
            batch = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()}
            loss = answer_loss(self.model, batch)
            (loss / accumulate).backward()
            losses.append(loss.item())
            if (index + 1) % accumulate == 0 or index == len(batches) - 1:
                if self.ft["max_grad_norm"]:
                    torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                   self.ft["max_grad_norm"])
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        return {"epoch": epoch, "loss": sum(losses) / max(1, len(losses)), "train_tokens": tokens * self.world,
                "train_seconds": seconds, "tokens_per_s": tokens * self.world / max(seconds, 1e-9),
                "lr": self.scheduler.get_last_lr()[0], "started_at": started_at, "ended_at": time.time()}

    def evaluate(self, rows_by_split: dict[str, list[dict]]) -> dict:
        """Accuracy per split and per kind (train, ID, OOD) on the given rows, with each row's prediction."""
        import torch

        self.module.eval()
        method = self.config["accuracy_method"]
        start = time.perf_counter()
        result: dict[str, Any] = {"splits": {}, "accuracy": {}, "p_true": {}, "predictions": {}}
        pooled: dict[str, list] = {k: [] for k in KINDS}
        with torch.no_grad():
            for name, rows in rows_by_split.items():
                if not rows:
                    continue
                out = acc.predict(self.module, self.fmt, rows, self.words, method=method,
                                  fast=self.config["use_fast_accuracy"],
                                  output_preamble=self.config["output_preamble"],
                                  batch_size=self.config["eval_batch_size"])
                kind = "train" if name == "train" else split_kind(name)
                result["splits"][name] = {"accuracy": acc.accuracy(rows, out["prediction"]), "n": len(rows),
                                          "kind": kind}
                result["predictions"][name] = out["prediction"]
                pooled[kind] += [(r, p, q) for r, p, q in zip(rows, out["prediction"],
                                                              out["p_true"] or [None] * len(rows))]
        for kind, items in pooled.items():
            result["accuracy"][kind] = (sum(r["label"] == p for r, p, _ in items) / len(items)) if items else None
            if items and items[0][2] is not None:
                result["p_true"][kind] = [q for _, _, q in items]
        result["eval_seconds"] = time.perf_counter() - start
        self.module.train()
        return result

    # --- checkpoints -----------------------------------------------------------------------------------------------

    def report(self, metrics: dict) -> None:
        """Record the epoch (history, W&B) and hand Ray Train a checkpoint of it (rank 0 writes it)."""
        import ray.train

        self.epoch = metrics["epoch"]
        if self.rank == 0:
            self.history.append(metrics)
            self._write_json("training_history.json", self._history_json())
            self.run.log(_flat(metrics), step=self.epoch)
        flat = {k: v for k, v in _flat(metrics).items() if v is not None}
        if self.rank != 0:
            ray.train.report(flat)
            return
        folder = tempfile.mkdtemp(prefix="raypipe-ft-ckpt-")
        try:
            self._save_state(folder)
            ray.train.report(flat, checkpoint=ray.train.Checkpoint.from_directory(folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _save_state(self, folder: str) -> None:
        from safetensors.torch import save_file

        weights = {name: p.detach().cpu().contiguous() for name, p in self.module.named_parameters()
                   if p.requires_grad}
        save_file(weights, os.path.join(folder, "trainable.safetensors"))
        optimizer = self.optimizer.state_dict()
        tensors, scalars = {}, {}
        for index, state in optimizer["state"].items():
            for key, value in state.items():
                if hasattr(value, "detach"):
                    tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"{index}.{key}"] = value
        save_file(tensors, os.path.join(folder, "optimizer.safetensors"))
        scheduler = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}
        state = {"epoch": self.epoch, "history": self.history, "resumed_from": self.resumed_from,
                 "wandb_id": self.wandb_id, "results_dir": self.results_dir,
                 "optimizer_param_groups": optimizer["param_groups"], "optimizer_scalars": scalars,
                 "scheduler": scheduler, "trainable": sorted(weights)}
        with open(os.path.join(folder, "state.json"), "w") as f:
            json.dump(state, f)

    def _restore(self, folder: str) -> None:
        import torch
        from safetensors.torch import load_file

        with open(os.path.join(folder, "state.json")) as f:
            state = json.load(f)
        weights = load_file(os.path.join(folder, "trainable.safetensors"))
        parameters = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                parameters[name].copy_(value.to(parameters[name].dtype))
        per_index: dict[int, dict] = {}
        for key, value in load_file(os.path.join(folder, "optimizer.safetensors")).items():
            index, name = key.split(".", 1)
            per_index.setdefault(int(index), {})[name] = value.to(self.device) if name != "step" else value
        for key, value in state["optimizer_scalars"].items():
            index, name = key.split(".", 1)
            per_index.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": per_index, "param_groups": state["optimizer_param_groups"]})
        self.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
        self.epoch, self.history, self.wandb_id = state["epoch"], state["history"], state["wandb_id"]
        self.resumed_from = state["resumed_from"] + [self.epoch]

    # --- the end ---------------------------------------------------------------------------------------------------

    def save(self) -> dict | None:
        """Rank 0: final full accuracy, plots, adapter and merged checkpoints, hub push; returns the accuracy."""
        if self.rank != 0:
            return None
        from raypipe.finetune import plots

        rows = {"train": self.train_rows, **self.test_rows}
        final = self.evaluate(rows)
        by_trigger: dict[str, dict] = {}
        for name, split_rows in rows.items():
            for row, prediction in zip(split_rows, final["predictions"].get(name, [])):
                entry = by_trigger.setdefault(f"{split_kind(name) if name != 'train' else 'train'}:{row['trigger']}",
                                              {"trigger": row["trigger"], "is_ood": row["is_ood"],
                                               "is_proxy": row["is_proxy"], "correct": 0, "n": 0})
                entry["correct"] += prediction == row["label"]
                entry["n"] += 1
        for entry in by_trigger.values():
            entry["accuracy"] = entry.pop("correct") / entry["n"]
        summary = {"epochs": self.epoch, "accuracy_method": self.config["accuracy_method"],
                   "accuracy": final["accuracy"], "splits": final["splits"], "per_trigger": by_trigger,
                   "label_words": self.words, "chance": 1 / len(self.words), "resumed_from": self.resumed_from,
                   "wandb": self.wandb_info, "model": self.config["_model_id"], "seed": self.config["seed"]}
        self._write_json("final_full_accuracy.json", summary)
        self._write_json("training_history.json", self._history_json())
        plots.save_png(self.results_dir, "loss_curve.png", plots.loss_curve_figure(self.history))
        plots.save_png(self.results_dir, "accuracy_curve.png",
                       plots.accuracy_curve_figure(self.history, 1 / len(self.words)))
        plots.save_png(self.results_dir, "accuracy_histogram.png",
                       plots.accuracy_histogram_figure({**final, "p_true": final["p_true"]}))
        self._save_models()
        if self.ft["save_checkpoints_to_hub"]:  # the seed pushes the adapter (the model itself for full SFT)
            from raypipe.finetune.hub import push_folder

            folder = os.path.join(self.results_dir, "adapter" if self.ft["is_peft"] else "merged")
            summary["hub_url"] = push_folder(folder, self.ft["hub_model_id"], private=self.ft["hub_private"])
            self._write_json("final_full_accuracy.json", summary)
        self.run.summary.update({f"final/{k}": v for k, v in final["accuracy"].items() if v is not None})
        self.run.finish()
        return summary

    def _save_models(self) -> None:
        """adapter/ (peft's safetensors adapter) and merged/ (base + adapter, in the base checkpoint's dtype)."""
        import torch

        model = self.module
        if self.ft["is_peft"]:
            _atomic_folder(os.path.join(self.results_dir, "adapter"),
                           lambda tmp: model.save_pretrained(tmp, safe_serialization=True))
            model = model.merge_and_unload()
        dtype = self.base_dtype if isinstance(self.base_dtype, torch.dtype) else (
            getattr(torch, self.base_dtype) if isinstance(self.base_dtype, str) else torch.float32)
        model = model.to("cpu", dtype=dtype)
        if self.ft["gradient_checkpointing"]:
            model.gradient_checkpointing_disable()

        def write(tmp: str) -> None:
            model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)

        _atomic_folder(os.path.join(self.results_dir, "merged"), write)

    def _history_json(self) -> dict:
        return {"epochs": self.ft["epochs"], "history": self.history, "resumed_from": self.resumed_from}

    def _write_json(self, name: str, data) -> None:
        from raypipe.fs import Location
        from raypipe.probes.metrics import json_safe

        Location(self.results_dir).write_atomic(name, (json.dumps(json_safe(data), indent=2) + "\n").encode())


def _sample(rows: list[dict], size: int | None, rng: random.Random) -> list[dict]:
    return list(rows) if size is None or size >= len(rows) else rng.sample(rows, size)


def _flat(metrics: dict) -> dict:
    """History entry -> flat scalars (for W&B and Ray): accuracy/ID, accuracy/test_objects_ID, ..."""
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    for key, value in (metrics.get("accuracy") or {}).items():
        flat[f"accuracy/{key}"] = value
    return flat


def _atomic_folder(final: str, write) -> None:
    """Write a folder under a temporary name, then swap it into place (a rerun replaces a half-written one)."""
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}-", dir=parent)
    try:
        write(tmp)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def evaluation_entry(recipe: FinetuneRecipe, epoch: int, train: dict | None) -> dict:
    """The history entry of an epoch: its training numbers and, when due, the snapshot accuracy."""
    entry = dict(train or {"epoch": epoch, "loss": None})
    config = recipe.config
    due = epoch == 0 or epoch % config["n_evals"] == 0 or epoch == config["finetune_config"]["epochs"]
    if due and recipe.rank == 0:
        result = recipe.evaluate(recipe.snapshot_rows)
        entry["accuracy"] = {**result["accuracy"],
                             **{name: s["accuracy"] for name, s in result["splits"].items() if name != "train"}}
        entry["eval_seconds"] = result["eval_seconds"]
    return entry


def train_loop_per_worker(config: dict) -> None:
    """Runs on each Ray Train worker: resume from the latest checkpoint if any, train, evaluate, save."""
    import ray.train

    recipe = FinetuneRecipe(config)
    recipe.setup(ray.train.get_checkpoint())
    if recipe.epoch == 0 and not recipe.history:  # a fresh start: the untrained model is the curves' first point
        if recipe.rank == 0:
            recipe.history.append(evaluation_entry(recipe, 0, None))
    for epoch in range(recipe.epoch + 1, recipe.ft["epochs"] + 1):
        recipe.report(evaluation_entry(recipe, epoch, recipe.train_epoch(epoch)))
    recipe.save()

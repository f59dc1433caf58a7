"""Finetune benchmark on the embedded SmolLM2-135M (CPU), in four parts; prints one JSON object per part.

    .venv/bin/python bench/finetune.py [--parts template,accuracy,throughput,seeds] [--out /tmp/raypipe-bench]
                                       [--threads N] [--rows 64] [--rounds 3] [--profile]

template   : the 2d_0proxy template, one seed, as shipped: wall time, final ID/OOD accuracy (chance 0.25), the first
             epoch whose snapshot reached ID accuracy >= 0.9, tokens/s of the training epochs
accuracy   : on that run's merged checkpoint and its test rows: logits (cached and reference paths) vs greedy
             generation: each accuracy, their agreement, and the speed-ups
throughput : tokens/s (non-pad tokens / training seconds) of raypipe's Ray Train task against a plain
             transformers.Trainer loop, same model, LoRA, rows (--rows of the template's train set), batch size,
             learning rate and torch threads, interleaved: --rounds rounds of (Trainer, Ray Train), two epochs each,
             the second (warm) epoch counted; the ratio of medians and each round's ratio. --profile adds a
             torch.profiler table of one warm step of each side (where the time goes)
seeds      : two seeds of a one-epoch variant of the template on a ray.cluster_utils.Cluster of two 1-CPU nodes:
             both finish, their training spans overlap, and a rerun skips both
The machine may be shared: only numbers from one run are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback addresses for the local cluster


def copy_template(name: str, target: str, config_changes: dict | None = None,
                  finetune_changes: dict | None = None, category_changes: dict | None = None) -> str:
    from raypipe.finetune.experiments import templates_dir

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(templates_dir() / name, target)
    path = os.path.join(target, "config.json")
    config = json.load(open(path))
    config.update(config_changes or {})
    config["finetune_config"].update(finetune_changes or {})
    json.dump(config, open(path, "w"), indent=2)
    path = os.path.join(target, "data_config.json")
    spec = json.load(open(path))
    for category, body in spec.items():
        if not category.startswith("_"):
            body.update(category_changes or {})
    json.dump(spec, open(path, "w"), indent=2)
    return target


def part_template(out: str, threads: int | None) -> dict:
    from raypipe.finetune.run import run_finetune

    exp = copy_template("2d_0proxy", os.path.join(out, "2d_0proxy"), finetune_changes={"cpus_per_worker": threads})
    start = time.perf_counter()
    marker = run_finetune(exp, rerun=True)
    wall = time.perf_counter() - start
    results = os.path.join(exp, f"seed_{marker['seed']}", marker["results_dir"])
    history = json.load(open(os.path.join(results, "training_history.json")))["history"]
    reached = next((h["epoch"] for h in history if (h.get("accuracy") or {}).get("ID", 0) >= 0.9), None)
    return {"part": "template", "wall_s": round(wall, 1), "final_accuracy": marker["accuracy"], "chance": 0.25,
            "epochs": marker["epochs"], "first_epoch_id_accuracy_ge_0.9": reached,
            "snapshots": [{"epoch": h["epoch"], **{k: h["accuracy"].get(k) for k in ("train", "ID", "OOD")}}
                          for h in history if h.get("accuracy")],
            "tokens_per_s": [round(h["tokens_per_s"], 1) for h in history if h.get("tokens_per_s")],
            "results_dir": results}


def part_accuracy(results_dir: str) -> dict:
    from raypipe.finetune.accuracy import accuracy, predict
    from raypipe.finetune.analysis import load_model
    from raypipe.tasks.experiment import load_experiment

    experiment = load_experiment(os.path.dirname(os.path.dirname(results_dir)))
    rows = [r for name, split in experiment.splits().items() if name.startswith("test_") for r in split]
    model, fmt = load_model(os.path.join(results_dir, "merged"))
    words = experiment.label_words()
    timings, predictions = {}, {}
    for name, kwargs in (("logits_cached", {"method": "logits", "fast": True}),
                         ("logits_reference", {"method": "logits", "fast": False}),
                         ("generation", {"method": "generation", "fast": True})):
        start = time.perf_counter()
        predictions[name] = predict(model, fmt, rows, words, **kwargs)["prediction"]
        timings[name] = time.perf_counter() - start
    agree = sum(a == b for a, b in zip(predictions["logits_cached"], predictions["generation"])) / len(rows)
    return {"part": "accuracy", "rows": len(rows),
            "accuracy": {k: accuracy(rows, v) for k, v in predictions.items()},
            "seconds": {k: round(v, 2) for k, v in timings.items()},
            "agreement_logits_vs_generation": agree,
            "cached_logits_identical_to_reference": predictions["logits_cached"] == predictions["logits_reference"],
            "speedup_logits_vs_generation": round(timings["generation"] / timings["logits_cached"], 2),
            "speedup_cached_vs_reference_logits": round(timings["logits_reference"] / timings["logits_cached"], 2),
            "unparsed_generations": sum(p is None for p in predictions["generation"])}


def _trainer(rows: list[dict], config, threads: int, epochs: int, callbacks=()):
    """The plain loop: transformers.Trainer, right padding, full-logit loss with -100 outside the answer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from raypipe.embedded import embedded_checkpoint
    from raypipe.finetune.data import ChatFormat

    torch.set_num_threads(threads)
    path = str(embedded_checkpoint())
    tokenizer = AutoTokenizer.from_pretrained(path)
    fmt = ChatFormat(tokenizer)
    ft = config.finetune_config
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=ft.r, lora_alpha=ft.lora_alpha, lora_dropout=ft.lora_dropout,
                                             target_modules=list(ft.target_modules), task_type="CAUSAL_LM"))
    examples = [fmt.encode(r) for r in rows]

    def collate(batch):
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), fmt.pad_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            ids[i, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
            labels[i, :len(e["labels"])] = torch.tensor(e["labels"])
            mask[i, :len(e["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    args = TrainingArguments(output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "raypipe-bench-trainer"),
                             per_device_train_batch_size=ft.per_device_train_batch_size,
                             learning_rate=ft.learning_rate, num_train_epochs=epochs, lr_scheduler_type="linear",
                             max_grad_norm=ft.max_grad_norm, logging_strategy="no", save_strategy="no",
                             report_to=[], use_cpu=True, dataloader_num_workers=0, seed=config.seed)
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collate,
                      callbacks=list(callbacks))
    return trainer, sum(len(e["input_ids"]) for e in examples)


def _trainer_epoch_rates(rows: list[dict], config, threads: int, epochs: int) -> list[float]:
    from transformers import TrainerCallback

    rates: list[float] = []

    class Timer(TrainerCallback):
        def on_epoch_begin(self, *args, **kwargs):
            self.start = time.perf_counter()

        def on_epoch_end(self, *args, **kwargs):
            rates.append(tokens / (time.perf_counter() - self.start))

    trainer, tokens = _trainer(rows, config, threads, epochs, [Timer()])
    trainer.train()
    return rates


def _ray_epoch_rates(exp: str) -> list[float]:
    from raypipe.finetune.run import run_finetune

    marker = run_finetune(exp, rerun=True)
    history = json.load(open(os.path.join(exp, f"seed_{marker['seed']}", marker["results_dir"],
                                          "training_history.json")))["history"]
    return [h["tokens_per_s"] for h in history if h.get("tokens_per_s")]


def part_throughput(out: str, threads: int, n_rows: int, rounds: int, profile: bool) -> dict:
    """Rounds of (Trainer, Ray Train), each two epochs, the warm second epoch counted: the machine's load moves
    both sides alike within a round."""
    import statistics

    import ray

    from raypipe.tasks.experiment import load_experiment

    exp = copy_template("2d_0proxy", os.path.join(out, "throughput"),
                        {"max_dataset_size": n_rows, "n_evals": 1000, "accuracy_sample_size": 1,
                         "train_accuracy_sample_size": 1},
                        {"epochs": 2, "cpus_per_worker": threads, "lora_dropout": 0.05},
                        {"n_test": 4})  # the final evaluation of a round: a few rows, not the template's 96
    experiment = load_experiment(exp)
    rows = experiment.finetune_rows()["train"]
    if not ray.is_initialized():
        ray.init(num_cpus=max(threads, os.cpu_count() or 1))
    trainer_rates, ray_rates = [], []
    for _ in range(rounds):
        trainer_rates.append(_trainer_epoch_rates(rows, experiment.config, threads, 2)[-1])
        ray_rates.append(_ray_epoch_rates(exp)[-1])
    report = {"part": "throughput", "rows": len(rows), "threads": threads, "rounds": rounds,
              "ray_train_tokens_per_s": [round(r, 1) for r in ray_rates],
              "trainer_tokens_per_s": [round(r, 1) for r in trainer_rates],
              "ratio_per_round": [round(r / t, 3) for r, t in zip(ray_rates, trainer_rates)],
              "ratio_of_medians": round(statistics.median(ray_rates) / statistics.median(trainer_rates), 3)}
    print(json.dumps(report), flush=True)  # before the profile: its numbers stand whatever the profile does
    if profile:
        for name, table in _profiles(experiment, rows, threads).items():
            print(f"--- {name}: {table['seconds_per_step']} s per step\n{table['top_ops']}", flush=True)
    return report


def _profiles(experiment, rows: list[dict], threads: int) -> dict:
    """torch.profiler's top operators (self CPU time) for warm training steps of each side, in this process: the
    recipe's step (left padding, logits of the answer positions only, summed loss) and the Trainer's step."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raypipe.embedded import embedded_checkpoint
    from raypipe.finetune.data import ChatFormat, answer_loss, collate

    torch.set_num_threads(threads)
    ft = experiment.config.finetune_config
    size, steps = ft.per_device_train_batch_size, 4
    path = str(embedded_checkpoint())
    fmt = ChatFormat(AutoTokenizer.from_pretrained(path))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), LoraConfig(
        r=ft.r, lora_alpha=ft.lora_alpha, lora_dropout=ft.lora_dropout, target_modules=list(ft.target_modules),
        task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=ft.learning_rate)
    encoded = [fmt.encode(r) for r in rows]
    batches = [collate(encoded[i:i + size], fmt.pad_id) for i in range(0, size * (steps + 1), size)]

    def recipe_step(batch):
        loss = answer_loss(model, batch, reduction="sum") / (batch["labels"] != -100).sum().item()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    trainer, _ = _trainer(rows, experiment.config, threads, 1)
    trainer.create_optimizer_and_scheduler(num_training_steps=steps + 1)
    loader = iter(trainer.get_train_dataloader())
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's own loop, which a lone step skips

    def trainer_step(_):
        trainer.training_step(trainer.model, next(loader))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    tables = {}
    for name, step in (("recipe", recipe_step), ("trainer", trainer_step)):
        step(batches[0])  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for batch in batches[1:]:
                step(batch)
            seconds = time.perf_counter() - start
        tables[name] = {"seconds_per_step": round(seconds / steps, 3),
                        "top_ops": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)}
    return tables


def part_seeds(out: str) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from raypipe.finetune.experiments import run_experiments

    if ray.is_initialized():
        ray.shutdown()
    exp = copy_template("2d_0proxy", os.path.join(out, "seeds"),
                        {"max_dataset_size": 32, "accuracy_sample_size": 8, "train_accuracy_sample_size": 8},
                        {"epochs": 1, "cpus_per_worker": 1})
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    try:
        ray.init(address=cluster.address)
        start = time.perf_counter()
        run_experiments([exp], [1, 2])
        wall = time.perf_counter() - start
        spans = {}
        for seed in (1, 2):
            marker = json.load(open(os.path.join(exp, f"seed_{seed}", "completed.json")))
            history = json.load(open(os.path.join(exp, f"seed_{seed}", marker["results_dir"],
                                                  "training_history.json")))["history"]
            spans[seed] = (history[1]["started_at"], history[1]["ended_at"])
        start = time.perf_counter()
        summary = run_experiments([exp], [1, 2])[os.path.abspath(exp)]
        rerun = time.perf_counter() - start
    finally:
        ray.shutdown()
        cluster.shutdown()
    overlap = min(e for _, e in spans.values()) - max(s for s, _ in spans.values())
    return {"part": "seeds", "wall_s": round(wall, 1), "training_overlap_s": round(overlap, 1),
            "overlapped": overlap > 0, "rerun_s": round(rerun, 2), "n_seeds_complete": summary["n_seeds"],
            "final_accuracy": summary["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="template,accuracy,throughput,seeds")
    parser.add_argument("--out", default="/tmp/raypipe-bench-finetune")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of each trainer (default: "
                                                                   "the CPUs of this machine)")
    parser.add_argument("--rows", type=int, default=64, help="train rows of the throughput part")
    parser.add_argument("--rounds", type=int, default=3, help="(Trainer, Ray Train) rounds of the throughput part")
    parser.add_argument("--profile", action="store_true", help="throughput: add torch.profiler tables")
    args = parser.parse_args()
    parts = args.parts.split(",")
    threads = args.threads or os.cpu_count() or 1
    os.makedirs(args.out, exist_ok=True)
    results_dir = None
    if "template" in parts:
        report = part_template(args.out, args.threads)
        results_dir = report["results_dir"]
        print(json.dumps(report), flush=True)
    if "accuracy" in parts:
        if results_dir is None:  # an earlier template run
            seed_dir = os.path.join(args.out, "2d_0proxy", "seed_42")
            results_dir = os.path.join(seed_dir, json.load(open(os.path.join(seed_dir, "completed.json")))[
                "results_dir"])
        print(json.dumps(part_accuracy(results_dir)), flush=True)
    if "throughput" in parts:
        part_throughput(args.out, threads, args.rows, args.rounds, args.profile)
    if "seeds" in parts:
        print(json.dumps(part_seeds(args.out)), flush=True)


if __name__ == "__main__":
    main()

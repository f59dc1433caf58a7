"""`python -m raypipe.build`: prompts -> rollouts -> labels -> prefill features -> shards + manifest, on Ray Data.

    python -m raypipe.build --preset smollm2_135m --out-dir runs/demo          # embedded default, local Ray
    ray job submit --address http://HEAD:8265 -- python -m raypipe.build --preset openthinker3_7b \\
        --train-dataset my_org/my_dataset --prompt-field prompt --out-dir /shared/probe_data

The driver reads and tokenizes the prompts, plans fixed shards, skips the ones the manifest already holds as
complete, and streams the rest through the stages, one Ray Data row per shard. It alone writes the manifest, after
each shard's files are on disk.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from raypipe.config import BuildConfig
from raypipe.data import PromptRow, load_splits, to_prompt_rows
from raypipe.errors import UserError
from raypipe.manifest import Manifest, ShardPlan, plan_shards
from raypipe.positions import expand_positions, row_offsets
from raypipe.stages.label import planned_labels


@dataclass
class Prepared:
    """Everything the driver resolves before Ray starts: a user error surfaces here, before any work."""

    local_model_path: str | None
    num_layers: int
    hidden_size: int
    layers: list[int]
    positions: list[int | str]  # negative offsets and 'marker:TEXT' entries, as the manifest records them
    rows: dict[str, list[PromptRow]]
    skipped: dict[str, dict[str, int]]
    labels: dict[str, dict]  # the labels this build stores, with definitions (stages.label.planned_labels)


def prepare(config: BuildConfig) -> Prepared:
    from transformers import AutoConfig, AutoTokenizer

    from raypipe.embedded import resolve_model_path

    model_path = resolve_model_path(config.model.model_id)
    try:
        hf_config = AutoConfig.from_pretrained(model_path, trust_remote_code=config.model.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {config.model.model_id!r}: {str(exc).strip().splitlines()[0]}") from exc
    text_config = hf_config.get_text_config()
    num_layers, hidden_size = text_config.num_hidden_layers, text_config.hidden_size
    layers = config.features.layer_list(num_layers)
    positions = expand_positions(config.features.position_specs(), tokenizer, config.features.eoi_tokens)
    check_semantic_models(config)

    rows, skipped = {}, {}
    source_rows, source_skipped = load_splits(config.source)
    for split, split_rows in source_rows.items():
        prompts = to_prompt_rows(split_rows, tokenizer, config.source.chat_template)
        rows[split], unusable = _drop_unusable(prompts, config, positions, tokenizer)
        skipped[split] = {**source_skipped[split], **unusable}
    if not any(rows.values()):
        raise UserError("no usable prompt is left after skipping bad rows: " + str(skipped))
    has_answers = any(row.answer is not None for split_rows in rows.values() for row in split_rows)
    labels = planned_labels(config.model, config.labels, config.source.label_columns, has_answers)
    return Prepared(_local_path(model_path), num_layers, hidden_size, layers, positions, rows, skipped, labels)


def check_semantic_models(config: BuildConfig) -> None:
    """An NLI or embedding model that will not load is a user error now, not a failed shard later."""
    labels = config.labels
    if config.model.num_samples < 2 or labels.semantic_method in ("off", "answer"):
        return
    from raypipe.stages.semantic_models import load_embedder, load_nli

    try:
        if labels.semantic_method == "nli":
            load_nli(labels.nli_model)
        else:
            load_embedder(labels.embedding_model)
    except (OSError, ValueError, ImportError) as exc:
        which = f"NLI model {labels.nli_model!r}" if labels.semantic_method == "nli" else \
            f"embedding model {labels.embedding_model!r}"
        raise UserError(f"cannot load {which}: {str(exc).strip().splitlines()[0]}") from exc


def _drop_unusable(prompts: list[PromptRow], config: BuildConfig, positions: list[int | str], tokenizer):
    """Prompts the model cannot take are skipped and counted by reason, never fail a shard.

    With --truncate-long-prompts a prompt over the context keeps its last max_model_len - 1 tokens instead (the end
    holds the chat template's assistant turn); its stored text is those tokens decoded, and it is counted as
    `prompt_truncated`.
    """
    kept, skipped = [], {}
    limit = config.model.max_model_len - 1
    fixed = [p for p in positions if isinstance(p, int)]
    min_tokens = -min(fixed) if fixed else 1
    for row in prompts:
        reason = None
        if len(row.prompt_token_ids) > limit and config.source.truncate_long_prompts:
            row = PromptRow(row.row_id, tokenizer.decode(row.prompt_token_ids[-limit:]), row.prompt_token_ids[-limit:],
                            row.answer)
            skipped["prompt_truncated"] = skipped.get("prompt_truncated", 0) + 1
        if len(row.prompt_token_ids) > limit:
            reason = "prompt_too_long"
        elif len(row.prompt_token_ids) < min_tokens:
            reason = "prompt_shorter_than_positions"
        if not reason:
            row.offsets = row_offsets(positions, tokenizer, row.prompt, row.prompt_token_ids)
            if row.offsets is None:
                if config.features.missing_marker == "fail":
                    raise UserError(f"row {row.row_id}: its prompt does not contain the marker of --positions "
                                    f"({', '.join(p for p in positions if isinstance(p, str))}); "
                                    f"--missing-marker skip counts such rows instead")
                reason = "marker_absent"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            kept.append(row)
    return kept, skipped


def _local_path(model_path: str) -> str | None:
    """The folder the checkpoint is read from on this node (a hub id resolves to its cache snapshot)."""
    import os

    if os.path.isdir(model_path):
        return model_path
    try:
        from transformers.utils import cached_file

        return os.path.dirname(cached_file(model_path, "config.json"))
    except Exception:  # noqa: BLE001 - only informational
        return None


def _derive_semantic_entropy_high(config: BuildConfig, manifest: Manifest) -> None:
    """Without --se-threshold, the binary semantic-entropy label splits at the best split of the train values.

    That threshold is known only once every train shard is written, so it is recorded in the manifest and the probe
    loader derives the label from `semantic_entropy` (shards are never rewritten).
    """
    labels = manifest.data["labels"]
    if "semantic_entropy" not in labels or config.labels.se_threshold is not None:
        return
    import math

    from raypipe.stages.label import LABEL_DEFINITIONS
    from raypipe.stages.semantic import best_split_threshold
    from raypipe.store import load_split

    values = load_split(config.out_dir, "train", layers=[0], positions=[0])["label.semantic_entropy"].tolist()
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return
    threshold = best_split_threshold(values)
    labels["semantic_entropy_high"] = {
        "kind": "binary", "definition": LABEL_DEFINITIONS["semantic_entropy_high"], "derived_from": "semantic_entropy",
        "params": {"threshold": threshold, "chosen_by": "best split of the train split's semantic_entropy"},
        "counts": {"train": {"0": sum(v <= threshold for v in values), "1": sum(v > threshold for v in values)}},
    }


def shard_row(plan: ShardPlan) -> dict[str, Any]:
    return {
        "split": plan.split,
        "index": plan.index,
        "row_id": [r.row_id for r in plan.rows],
        "prompt": [r.prompt for r in plan.rows],
        "prompt_token_ids": [r.prompt_token_ids for r in plan.rows],
        "answer": [r.answer for r in plan.rows],
        "columns": [r.columns for r in plan.rows],
        "offsets": [r.offsets for r in plan.rows],
    }


def run_build(config: BuildConfig, overwrite: bool = False) -> int:
    """Build (or resume) the probe dataset described by `config`; return the process exit code."""
    prepared = prepare(config)
    plans = plan_shards(prepared.rows, config.shard_size)
    manifest = Manifest.open(config, prepared, plans, overwrite=overwrite)
    pending = manifest.pending(plans)
    print(f"raypipe: {len(plans)} shards planned, {len(plans) - len(pending)} already complete, "
          f"{len(pending)} to build -> {config.out_dir}", flush=True)
    if pending:
        for entry in _execute(config, prepared, pending):
            if entry.get("status") == "failed":
                manifest.fail(entry)
                print(f"raypipe: FAILED {entry['split']}/{entry['name']} after {entry['attempts']} attempts: "
                      f"{entry['error']}", flush=True)
            else:
                manifest.complete(entry)
                print(f"raypipe: wrote {entry['split']}/{entry['name']} ({entry['rows']} rows)", flush=True)
    failed = manifest.failed()
    if not failed:
        _derive_semantic_entropy_high(config, manifest)
    manifest.finish()
    if failed:
        print(f"raypipe: {len(failed)} shard(s) failed: {', '.join(failed)}; rerun the same command to retry them "
              f"(manifest: {manifest.path})", file=sys.stderr, flush=True)
        return 1
    print(f"raypipe: done; manifest at {manifest.path}", flush=True)
    return 0


def _execute(config: BuildConfig, prepared: Prepared, pending: list[ShardPlan]):
    """Stream the pending shards through rollout -> label -> prefill -> write on Ray Data; yield manifest entries."""
    import ray

    from raypipe.stages.label import LabelStage
    from raypipe.stages.prefill import PrefillStage
    from raypipe.stages.rollout import RolloutStage
    from raypipe.stages.write import WriteStage

    from raypipe.payload import FAULT_ENV

    if not ray.is_initialized():
        # Joins RAY_ADDRESS (e.g. under `ray job submit`), else starts a local cluster.
        env_vars = {FAULT_ENV: os.environ[FAULT_ENV]} if os.environ.get(FAULT_ENV) else {}
        ray.init(log_to_driver=True, runtime_env={"env_vars": env_vars} if env_vars else None)
    retries = config.max_retries
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    model = config.model
    ds = ray.data.from_items([shard_row(p) for p in pending], override_num_blocks=len(pending))
    ds = ds.map_batches(
        RolloutStage, batch_size=1, compute=ray.data.ActorPoolStrategy(size=model.dp),
        fn_constructor_kwargs={"model_id": model.model_id, "model": model, "seed": config.source.seed,
                               "num_samples": model.num_samples, "retries": retries},
        num_gpus=model.tp if use_gpu else 0, num_cpus=1,
    )
    ds = ds.map_batches(LabelStage, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0,
                        fn_constructor_kwargs={"loop_n": model.loop_n, "loop_k": model.loop_k,
                                               "labels": config.labels, "planned": prepared.labels})
    ds = ds.map_batches(
        PrefillStage, batch_size=1, compute=ray.data.ActorPoolStrategy(size=model.prefill_actors),
        fn_constructor_kwargs={
            "model_id": model.model_id, "dtype": model.dtype, "layers": prepared.layers,
            "positions": prepared.positions, "batch_tokens": model.prefill_batch_tokens,
            "trust_remote_code": model.trust_remote_code, "retries": retries,
        },
        num_gpus=1 if use_gpu else 0, num_cpus=1,
    )
    # Writing is I/O: zero CPUs, so that it never waits behind the model actors for a slot.
    ds = ds.map_batches(WriteStage, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0,
                        fn_constructor_kwargs={"out_dir": config.out_dir, "retries": retries})
    started = time.time()
    for row in ds.iter_rows():
        entry = json.loads(row["entry"])
        if "stats" in entry:
            entry["stats"]["elapsed_s"] = round(time.time() - started, 3)
        yield entry


def main() -> None:
    from raypipe.cli import build_app

    build_app()


if __name__ == "__main__":
    main()

"""A build end to end: prompts -> rollouts -> labels -> prefill features -> shards + manifest, on Ray Data.

The driver reads and tokenizes the prompts, plans fixed shards, skips the ones the manifest already holds as
complete, and streams the rest through the stages, one Ray Data row per shard. It alone writes the manifest, after
each shard's files are on disk. `python -m raypipe.build` is the command over `run_build`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import warnings
from typing import Any

from raypipe.config import BuildConfig
from raypipe.data import PromptRow, load_splits, to_prompt_rows
from raypipe.errors import UserError
from raypipe.manifest import Manifest
from raypipe.plan import SPLITS, BuildInputs, ShardPlan, plan_shards
from raypipe.positions import expand_positions, row_offsets

STAGES = ("rollout", "label", "prefill", "write")
ACTOR_TASK_RETRIES = 2  # times Ray Data gives a shard to a fresh actor after its actor ended on a fatal error


def prepare(config: BuildConfig) -> BuildInputs:
    from transformers import AutoConfig, AutoTokenizer

    from raypipe.embedded import resolve_model_path
    from raypipe.labels import catalog

    source_rows, source_skipped = load_splits(config.source)  # data mistakes surface before any model loads
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
    for split, split_rows in source_rows.items():
        prompts = to_prompt_rows(split_rows, tokenizer, config.source.chat_template)
        rows[split], unusable = usable_rows(prompts, config, positions, tokenizer)
        skipped[split] = {**source_skipped[split], **unusable}
    if not any(rows.values()):
        raise UserError("no usable prompt is left after skipping bad rows: " + str(skipped))
    has_answers = any(row.answer is not None for split_rows in rows.values() for row in split_rows)
    labels = catalog.plan(config.model, config.labels, config.source.label_columns, has_answers)
    return BuildInputs(_local_path(model_path), num_layers, hidden_size, layers, positions, rows, skipped, labels)


def check_semantic_models(config: BuildConfig) -> None:
    """An NLI or embedding model that will not load is a user error now, not a failed shard later."""
    labels = config.labels
    if config.model.num_samples < 2 or labels.semantic_method in ("off", "answer"):
        return
    from raypipe.labels.semantic_models import load_embedder, load_nli

    try:
        if labels.semantic_method == "nli":
            load_nli(labels.nli_model)
        else:
            load_embedder(labels.embedding_model)
    except (OSError, ValueError, ImportError) as exc:
        which = f"NLI model {labels.nli_model!r}" if labels.semantic_method == "nli" else \
            f"embedding model {labels.embedding_model!r}"
        raise UserError(f"cannot load {which}: {str(exc).strip().splitlines()[0]}") from exc


def usable_rows(prompts: list[PromptRow], config: BuildConfig, positions: list[int | str], tokenizer):
    """Prompts the model can take; the others are skipped and counted by reason, never fail a shard.

    With --truncate-long-prompts a prompt over the context keeps its last max_model_len - 1 tokens instead (the end
    holds the chat template's assistant turn), and everything else about its row (id, answer, label columns); its
    stored text is those tokens decoded, and it is counted as `prompt_truncated`.
    """
    kept, skipped = [], {}
    limit = config.model.max_model_len - 1
    fixed = [p for p in positions if isinstance(p, int)]
    min_tokens = -min(fixed) if fixed else 1
    for row in prompts:
        reason = None
        if len(row.prompt_token_ids) > limit and config.source.truncate_long_prompts:
            ids = row.prompt_token_ids[-limit:]
            row = dataclasses.replace(row, prompt=tokenizer.decode(ids), prompt_token_ids=ids)
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
    if os.path.isdir(model_path):
        return model_path
    try:
        from transformers.utils import cached_file

        return os.path.dirname(cached_file(model_path, "config.json"))
    except Exception:  # noqa: BLE001 - only informational
        return None


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
    inputs = prepare(config)
    plans = plan_shards(inputs.rows, config.shard_size)
    manifest = Manifest.open(config, inputs, plans, overwrite=overwrite)
    pending = manifest.pending(plans)
    print(f"raypipe: {len(plans)} shards planned, {len(plans) - len(pending)} already complete, "
          f"{len(pending)} to build -> {config.out_dir}", flush=True)
    if pending:
        for entry in execute(config, inputs, pending):
            if entry.get("status") == "failed":
                manifest.fail(entry)
                print(f"raypipe: FAILED {entry['split']}/{entry['name']} after {entry['attempts']} attempts: "
                      f"{entry['error']}", flush=True)
            else:
                manifest.complete(entry)
    failed = manifest.failed()
    if not failed:
        _finish_derived_labels(config, manifest)
    manifest.finish()
    if failed:
        print(f"raypipe: {len(failed)} shard(s) failed: {', '.join(failed)}; rerun the same command to retry them "
              f"(manifest: {manifest.path})", file=sys.stderr, flush=True)
        return 1
    print(f"raypipe: done; manifest at {manifest.path}", flush=True)
    print(next_steps(config.out_dir), flush=True)
    return 0


def next_steps(out_dir: str) -> str:
    name = os.path.basename(out_dir.rstrip("/")) or "build"
    parent = os.path.dirname(out_dir.rstrip("/"))
    probe, sweep = os.path.join(parent, f"{name}-probe"), os.path.join(parent, f"{name}-sweep")
    return ("next:\n"
            f"  raypipe status {out_dir}\n"
            f"  raypipe train --data-dir {out_dir} --out-dir {probe}\n"
            f"  raypipe sweep --data-dir {out_dir} --out-dir {sweep}")


def _finish_derived_labels(config: BuildConfig, manifest: Manifest) -> None:
    """Thresholds of derived labels are chosen on the train split once every shard is complete (never rewriting
    a shard); the manifest records them and the derived labels' counts."""
    from raypipe.labels.catalog import finish_derived
    from raypipe.store import load_split

    labels = manifest.data["labels"]
    if not any(definition.get("derived_from") for definition in labels.values()):
        return
    splits = [split for split in SPLITS if manifest.data["splits"].get(split, {}).get("rows")]

    def values_of(split: str, name: str):
        return load_split(config.out_dir, split, layers=[0], positions=[0])[f"label.{name}"].double().numpy()

    finish_derived(labels, values_of, splits)


# --- Ray --------------------------------------------------------------------------------------------------------------

def connect_ray() -> None:
    """Join RAY_ADDRESS (e.g. under `ray job submit`) or the cluster `ray start` recorded, else start a local one.

    A recorded cluster whose head has died would make `ray.init()` retry its address for minutes: check first and
    stop with one line that names the address and the ways out.
    """
    import logging

    import ray

    if ray.is_initialized():
        return
    address = recorded_ray_address()
    if address is not None and not _answers(address):
        raise UserError(f"Ray would join the cluster at {address} ({_address_origin()}), but nothing answers there: "
                        "its head has died. Run `ray stop` to clear the record, or set RAY_ADDRESS=local for a fresh "
                        "local cluster (or RAY_ADDRESS=HOST:PORT for a live one)")
    from raypipe.stages.base import FAULT_ENV, FAULT_STATE_ENV

    env_vars = {name: os.environ[name] for name in (FAULT_ENV, FAULT_STATE_ENV, "VLLM_CPU_KVCACHE_SPACE")
                if os.environ.get(name)}
    # Ray's own detail (actor logs, engine start-up) goes to its log files; the console shows raypipe's progress.
    ray.init(log_to_driver=False, logging_level=logging.ERROR,
             runtime_env={"env_vars": env_vars} if env_vars else None)
    import ray.data

    for handler in logging.getLogger("ray.data").handlers:  # Ray Data keeps writing everything to ray-data.log
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)
    print(f"raypipe: Ray {'joined at ' + address if address else 'started locally'}; its logs: "
          f"{_ray_log_dir()}", flush=True)


def recorded_ray_address() -> str | None:
    """host:port of the cluster `ray.init()` would join (RAY_ADDRESS, else `ray start`'s record); None: a new one."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        return canonicalize_bootstrap_address(None)
    except Exception:  # noqa: BLE001 - an unreadable record: let ray.init report it
        return None


def _address_origin() -> str:
    return "from RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "recorded by the last `ray start` on this machine"


def _answers(address: str, timeout: float = 3.0) -> bool:
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _ray_log_dir() -> str:
    import ray

    try:
        return os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    except Exception:  # noqa: BLE001 - a joined cluster's session folder lives on its head
        return "the head node's /tmp/ray/session_latest/logs"


def execute(config: BuildConfig, inputs: BuildInputs, pending: list[ShardPlan]):
    """Stream the pending shards through rollout -> label -> prefill -> write on Ray Data; yield manifest entries.

    A shard whose stage actor died on it more often than Ray's task retries allow never comes back from Ray Data;
    it is yielded as failed, so that the rest of the build still finishes.
    """
    import ray

    from raypipe.progress import ProgressPrinter, start_board
    from raypipe.stages.label import LabelStage
    from raypipe.stages.prefill import PrefillStage
    from raypipe.stages.rollout import RolloutStage
    from raypipe.stages.write import WriteStage
    from raypipe.store import shard_name

    connect_ray()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # one line per stage from raypipe instead of Ray Data's blocks
    context.print_on_execution_start = False
    context.max_errored_blocks = len(pending)  # a lost shard is reported failed; the others still finish
    retries = config.max_retries
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    model = config.model
    board = start_board(list(STAGES), len(pending), sum(len(p.rows) for p in pending))
    # Bounded: a shard that kills every actor it meets must end as failed, not restart actors forever. Ray 2.60 has
    # no named map_batches parameter for these, only the deprecated **ray_remote_args.
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
    actor_args = {"max_restarts": -1, "max_task_retries": ACTOR_TASK_RETRIES}
    ds = ray.data.from_items([shard_row(p) for p in pending], override_num_blocks=len(pending))
    ds = ds.map_batches(
        RolloutStage, batch_size=1, compute=ray.data.ActorPoolStrategy(size=model.dp),
        fn_constructor_kwargs={"model_id": model.model_id, "model": model, "seed": config.source.seed,
                               "num_samples": model.num_samples, "retries": retries, "progress": board},
        num_gpus=model.tp if use_gpu else 0, num_cpus=1, **actor_args,
    )
    ds = ds.map_batches(LabelStage, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0,
                        fn_constructor_kwargs={"loop_n": model.loop_n, "loop_k": model.loop_k,
                                               "labels": config.labels, "planned": inputs.labels,
                                               "progress": board}, **actor_args)
    ds = ds.map_batches(
        PrefillStage, batch_size=1, compute=ray.data.ActorPoolStrategy(size=model.prefill_actors),
        fn_constructor_kwargs={
            "model_id": model.model_id, "dtype": model.dtype, "layers": inputs.layers,
            "positions": inputs.positions, "batch_tokens": model.prefill_batch_tokens,
            "trust_remote_code": model.trust_remote_code, "retries": retries, "progress": board,
        },
        num_gpus=1 if use_gpu else 0, num_cpus=1, **actor_args,
    )
    # Writing is I/O: zero CPUs, so that it never waits behind the model actors for a slot.
    ds = ds.map_batches(WriteStage, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0,
                        fn_constructor_kwargs={"out_dir": config.out_dir, "retries": retries, "progress": board},
                        **actor_args)
    returned = set()
    with ProgressPrinter(board, list(STAGES)):
        for row in ds.iter_rows():
            entry = json.loads(row["entry"])
            returned.add((entry["split"], entry["name"]))
            yield entry
    for plan in pending:
        if (plan.split, plan.name) not in returned:
            tries = ACTOR_TASK_RETRIES + 1
            yield {"split": plan.split, "name": shard_name(plan.index), "status": "failed", "attempts": tries,
                   "error": f"lost: the actor running it died on it {tries} times (a fatal error such as running "
                            "out of device memory; see Ray's logs)"}

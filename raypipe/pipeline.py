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
from raypipe.data import open_sources, read_rows, to_prompt_rows
from raypipe.errors import UserError
from raypipe.manifest import Manifest
from raypipe.plan import SPLITS, BuildInputs, ShardPlan, plan_shards
from raypipe.positions import expand_positions

STAGES = ("prepare", "rollout", "label", "prefill", "write")
ACTOR_TASK_RETRIES = 2  # times Ray Data gives a shard to a fresh actor after its actor ended on a fatal error


def prepare(config: BuildConfig) -> BuildInputs:
    """Resolve sources, model shape, features and labels, and check every input a user gave, before any work."""
    from transformers import AutoConfig, AutoTokenizer

    from raypipe.embedded import resolve_model_path
    from raypipe.labels import catalog

    sources, splits = open_sources(config.source)  # data mistakes surface before any model loads
    model_path = resolve_model_path(config.model.model_id)
    try:
        hf_config = AutoConfig.from_pretrained(model_path, trust_remote_code=config.model.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {config.model.model_id!r}: {str(exc).strip().splitlines()[0]}") from exc
    text_config = hf_config.get_text_config()
    num_layers, hidden_size = text_config.num_hidden_layers, text_config.hidden_size
    heads = getattr(text_config, "num_attention_heads", None)
    if config.backend == "vllm" and heads and heads % config.model.vllm.tp:
        raise UserError(f"--tp {config.model.vllm.tp} must divide the model's {heads} attention heads (tensor "
                        f"parallelism splits them); use a tp that does")
    layers = config.features.layer_list(num_layers)
    positions = expand_positions(config.features.position_specs(), tokenizer, config.features.eoi_tokens)
    if config.source.chat_template and not getattr(tokenizer, "chat_template", None):
        raise UserError("the model's tokenizer has no chat template; pass --no-chat-template for raw prompts")
    check_semantic_models(config)
    if config.features.missing_marker == "fail":
        check_markers(sources, splits, positions, tokenizer, config)
    has_answers = any(source.has_answers for source in sources.values())
    rollouts = config.backend != "none"
    if not rollouts and any(isinstance(p, str) and p.startswith("answer:") for p in positions):
        raise UserError("--positions answer:-N reads the first sample's tokens; --backend none generates none")
    labels = catalog.plan(config.model, config.labels, config.source.label_columns, has_answers,
                          answer_match(config, sources) if has_answers else "math", rollouts=rollouts,
                          classes=sources["train"].classes)
    absent = {} if rollouts else catalog.absent_without_rollouts(config.model, config.labels,
                                                                  config.source.label_columns, has_answers)
    return BuildInputs(_local_path(model_path), num_layers, hidden_size, layers, positions, labels, sources, splits,
                       absent)


def answer_match(config: BuildConfig, sources) -> str:
    """--answer-match, with auto resolved from (up to 1,000 of) the references: math when they look mathematical."""
    if config.labels.answer_match != "auto":
        return config.labels.answer_match
    from raypipe.labels.answers import answer_match_default

    references = [value for source in sources.values() if source.answer_field
                  for value in source.table.column(source.answer_field).slice(0, 1000).to_pylist()]
    return answer_match_default([None if value is None else str(value) for value in references])


def check_markers(sources, splits, positions, tokenizer, config: BuildConfig) -> None:
    """--missing-marker fail: a prompt without a marker stops the build before any work (a text check over every
    prompt; the prepare stage counts the rare token-level miss)."""
    markers = [p.removeprefix("marker:") for p in positions if isinstance(p, str) and p.startswith("marker:")]
    for split, part in splits.items():
        rows, _ = read_rows(sources[part.source], part.indices, part.row_ids)
        for row in rows:
            missing = [m for m in markers if m not in row["question"]]
            if missing and config.source.chat_template:  # the template itself may hold the marker
                text = to_prompt_rows([row], tokenizer, True)[0].prompt
                missing = [m for m in missing if m not in text]
            if missing:
                raise UserError(f"row {row['row_id']}: its prompt does not contain the marker of --positions "
                                f"({', '.join('marker:' + m for m in missing)}); --missing-marker skip counts such "
                                "rows instead")


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
    """A pending shard as it enters the pipeline: where its rows are, not the rows (the prepare stage reads them)."""
    return {"split": plan.split, "index": plan.index, "source": plan.source, "source_rows": plan.indices,
            "row_id": plan.row_ids}


def run_build(config: BuildConfig, overwrite: bool = False) -> int:
    """Build (or resume) the probe dataset described by `config`; return the process exit code."""
    inputs = prepare(config)
    plans = plan_shards(inputs.splits, config.shard_size)
    manifest = Manifest.open(config, inputs, plans, overwrite=overwrite)
    pending = manifest.pending(plans)
    print(f"raypipe: {len(plans)} shards planned, {len(plans) - len(pending)} already complete, "
          f"{len(pending)} to build -> {config.out_dir}", flush=True)
    if pending:
        for entry in execute(config, inputs, pending, manifest):
            if entry.get("status") == "failed":
                manifest.fail(entry)
                print(f"raypipe: FAILED {entry['split']}/{entry['name']} after {entry['attempts']} attempts: "
                      f"{entry['error']}", flush=True)
            else:
                manifest.complete(entry)
    failed = manifest.failed()
    written = sum(split.get("rows", 0) for split in manifest.data["splits"].values())
    if not failed and not written:
        manifest.finish()
        raise UserError(f"every row was skipped, none is left to probe: {manifest.data['skipped_rows']}")
    if not failed:
        _finish_derived_labels(config, manifest)
    manifest.finish()
    if failed:
        print(f"raypipe: {len(failed)} shard(s) failed: {', '.join(failed)}; rerun the same command to retry them "
              f"(manifest: {manifest.path})", file=sys.stderr, flush=True)
        return 1
    print(f"raypipe: done; manifest at {manifest.path}", flush=True)
    print(next_steps(config.out_dir, bool(manifest.data["labels"])), flush=True)
    return 0


def next_steps(out_dir: str, has_labels: bool = True) -> str:
    name = os.path.basename(out_dir.rstrip("/")) or "build"
    parent = os.path.dirname(out_dir.rstrip("/"))
    probe, sweep = os.path.join(parent, f"{name}-probe"), os.path.join(parent, f"{name}-sweep")
    if not has_labels:
        return (f"next: this build has features and no label (--label-column COLUMN gives one):\n"
                f"  raypipe status {out_dir}\n  raypipe explore {out_dir}")
    return ("next:\n"
            f"  raypipe status {out_dir}\n"
            f"  raypipe train --data-dir {out_dir} --out-dir {probe}\n"
            f"  raypipe sweep --data-dir {out_dir} --out-dir {sweep}\n"
            f"  raypipe explore {out_dir} --sweep {sweep}")


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
    """host:port of the cluster `ray.init()` would join (RAY_ADDRESS as given, else `ray start`'s record); None for a
    new local cluster, and for addresses that are not a GCS's (Ray client, dashboard): ray.init reports those."""
    given = os.environ.get("RAY_ADDRESS", "").strip()
    if given == "local" or given.startswith(("ray://", "http://", "https://")):
        return None
    if given and given != "auto":
        return given
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


def cluster_nodes(gpu_memory_gb: float | None) -> tuple[list, list[str]]:
    """The alive nodes' GPUs (placement.Node), and notes on how their memory was known."""
    import ray

    from raypipe.placement import DEFAULT_GPU_MEMORY_GB, Node

    counts = [int(node["Resources"].get("GPU", 0)) for node in ray.nodes() if node.get("Alive")]
    notes = []
    if any(counts) and gpu_memory_gb is None:
        gpu_memory_gb = _device_memory_gb()
        if gpu_memory_gb is None:
            gpu_memory_gb = DEFAULT_GPU_MEMORY_GB
            notes.append(f"no CUDA device answered for its memory (logical GPUs?); assumed {gpu_memory_gb:.0f} GB, "
                         "set --gpu-memory-gb")
    return [Node(gpus, gpu_memory_gb or 0.0) for gpus in counts], notes


def _device_memory_gb() -> float | None:
    """Total memory of one GPU of the cluster, asked of a GPU task (None where no CUDA device is behind the GPU)."""
    import ray

    def memory() -> float | None:
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 1e9 if torch.cuda.is_available() else None

    try:
        return ray.get(ray.remote(num_gpus=1, num_cpus=0)(memory).remote(), timeout=300)
    except Exception:  # noqa: BLE001 - then the default, and the build says so
        return None


def plan_placement(config: BuildConfig, inputs: BuildInputs):
    from transformers import AutoConfig

    from raypipe.embedded import resolve_model_path
    from raypipe.placement import ModelShape, model_shape, place

    nodes, notes = cluster_nodes(config.gpu_memory_gb)
    if any(node.gpus for node in nodes):
        hf_config = AutoConfig.from_pretrained(resolve_model_path(config.model.model_id),
                                               trust_remote_code=config.model.trust_remote_code)
        shape = model_shape(hf_config, bytes_per_value=4 if config.model.dtype == "float32" else 2)
    else:
        shape = ModelShape(0.0, 0.0)
    placement = place(config.model, shape, nodes, config.backend, config.placement)
    return dataclasses.replace(placement, notes=placement.notes + tuple(notes))


def execute(config: BuildConfig, inputs: BuildInputs, pending: list[ShardPlan], manifest: Manifest | None = None):
    """Stream the pending shards through the stages on Ray Data; yield manifest entries as shards are written.

    cpu and separate placements: rollout -> label -> prefill -> write, each stage its own actor pool. colocated:
    engine (rollout + prefill on the same GPUs) -> label -> write. A shard whose stage actor died on it more often
    than Ray's task retries allow never comes back from Ray Data; it is yielded as failed, so that the rest of the
    build still finishes.
    """
    import ray

    from raypipe.progress import ProgressPrinter, start_board
    from raypipe.stages.colocated import ColocatedStage
    from raypipe.stages.label import LabelStage
    from raypipe.stages.prefill import PrefillStage
    from raypipe.stages.prepare import PrepareStage
    from raypipe.stages.rollout import RolloutStage
    from raypipe.stages.write import WriteStage
    from raypipe.store import shard_name

    connect_ray()
    placement = plan_placement(config, inputs)
    print(f"raypipe: placement {placement.describe()}", flush=True)
    if manifest is not None:
        manifest.record_run({"placement": placement.to_dict()})
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # one line per stage from raypipe instead of Ray Data's blocks
    context.print_on_execution_start = False
    context.max_errored_blocks = len(pending)  # a lost shard is reported failed; the others still finish
    model, retries = config.model, config.max_retries
    stages = [stage for stage in STAGES if stage != "rollout" or config.backend != "none"]
    board = start_board(stages, len(pending), sum(len(p.indices) for p in pending))
    # Bounded: a shard that kills every actor it meets must end as failed, not restart actors forever. Ray 2.60 has
    # no named map_batches parameter for these, only the deprecated **ray_remote_args.
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
    actor_args = {"max_restarts": -1, "max_task_retries": ACTOR_TASK_RETRIES}
    rollout = {"model_id": model.model_id, "model": model, "seed": config.source.seed, "backend": config.backend,
               "retries": retries}
    prefill = {"model_id": model.model_id, "dtype": model.dtype, "layers": inputs.layers,
               "positions": inputs.positions, "batch_tokens": model.prefill_batch_tokens,
               "trust_remote_code": model.trust_remote_code, "retries": retries}
    engine_pool = ray.data.ActorPoolStrategy(size=max(placement.engines, 1),
                                             max_tasks_in_flight_per_actor=model.shards_in_flight)
    ds = ray.data.from_items([shard_row(p) for p in pending], override_num_blocks=len(pending))
    # The sources' tables go to the object store once; a list keeps Ray from resolving the reference early.
    sources = {key: dataclasses.replace(source, table=[ray.put(source.table)])
               for key, source in inputs.sources.items()}
    # Tokenizing a shard takes milliseconds: zero CPUs, so that it never waits behind the model actors.
    ds = ds.map_batches(PrepareStage, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0,
                        fn_constructor_kwargs={"config": config, "sources": sources, "positions": inputs.positions,
                                               "retries": retries, "progress": board}, **actor_args)
    if config.backend == "none":
        pass  # no rollouts: not a token is generated
    elif placement.mode == "colocated":
        vllm_share = dataclasses.replace(model, vllm=dataclasses.replace(
            model.vllm, gpu_memory_utilization=placement.vllm_memory_utilization))
        ds = ds.map_batches(
            ColocatedStage, batch_size=1, compute=engine_pool, num_gpus=placement.gpus_per_engine, num_cpus=1,
            fn_constructor_kwargs={"rollout": {**rollout, "model": vllm_share}, "progress": board,
                                   "prefill": {**prefill, "max_memory_gb": placement.prefill_memory_gb}},
            max_concurrency=model.shards_in_flight, **actor_args)
    else:
        ds = ds.map_batches(RolloutStage, batch_size=1, compute=engine_pool, num_gpus=placement.gpus_per_engine,
                            num_cpus=1, fn_constructor_kwargs={**rollout, "progress": board},
                            max_concurrency=model.shards_in_flight, **actor_args)
    ds = ds.map_batches(LabelStage, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0,
                        fn_constructor_kwargs={"loop_n": model.loop_n, "loop_k": model.loop_k,
                                               "labels": config.labels, "planned": inputs.labels,
                                               "progress": board}, **actor_args)
    if placement.mode != "colocated":
        ds = ds.map_batches(PrefillStage, batch_size=1,
                            compute=ray.data.ActorPoolStrategy(size=placement.prefill_actors),
                            num_gpus=placement.gpus_per_prefill, num_cpus=1,
                            fn_constructor_kwargs={**prefill, "progress": board}, **actor_args)
    # Writing is I/O: zero CPUs, so that it never waits behind the model actors for a slot.
    ds = ds.map_batches(WriteStage, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0,
                        fn_constructor_kwargs={"out_dir": config.out_dir, "retries": retries, "progress": board},
                        **actor_args)
    returned = set()
    print(f"raypipe: streaming {len(pending)} shards", flush=True)
    with ProgressPrinter(board, stages):
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

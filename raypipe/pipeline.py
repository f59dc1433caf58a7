"""A build end to end: prompts -> rollouts -> labels -> prefill features -> shards + manifest, on Ray Data.

The driver opens the sources (plan.py: no prompt text in its memory), plans fixed shards, skips the ones the manifest
already holds as complete, and streams the rest through the stages (the prepare stage tokenizes), one Ray Data row
per shard. It alone writes the manifest, after
each shard's files are on disk. `python -m raypipe.build` is the command over `run_build`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import warnings
from typing import Any

from raypipe.cluster import connect
from raypipe.cluster import nodes as cluster_nodes
from raypipe.config import BuildConfig
from raypipe.embedded import resolve_model_path
from raypipe.errors import UserError
from raypipe.labels.catalog import finish_derived
from raypipe.output import FAILED, LABEL_PREFIX, Build, BuildManifest, ShardRecord, shard_name
from raypipe.placement import ModelShape, model_shape, place
from raypipe.plan import BuildInputs, ShardPlan, plan_shards, prepare
from raypipe.progress import ProgressPrinter, start_board
from raypipe.resume import open_build
from raypipe.topology import ACTOR_TASK_RETRIES, stage_names, stage_specs


def shard_row(plan: ShardPlan) -> dict[str, Any]:
    """A pending shard as it enters the pipeline: where its rows are, not the rows (the prepare stage reads them)."""
    return {"split": plan.split, "index": plan.index, "source": plan.source, "source_rows": plan.indices,
            "row_id": plan.row_ids}


def run_build(config: BuildConfig, overwrite: bool = False) -> int:
    """Build (or resume) the probe dataset described by `config`; return the process exit code."""
    inputs = prepare(config)
    plans = plan_shards(inputs.splits, config.shard_size)
    manifest = open_build(config, inputs, plans, overwrite=overwrite)
    pending = manifest.pending(plans)
    print(f"raypipe: {len(plans)} shards planned, {len(plans) - len(pending)} already complete, "
          f"{len(pending)} to build -> {config.out_dir}", flush=True)
    if pending:
        for shard in execute(config, inputs, pending, manifest):
            if shard.status == FAILED:
                manifest.fail(shard)
                print(f"raypipe: FAILED {shard.split}/{shard.name} after {shard.attempts} attempts: {shard.error}",
                      flush=True)
            else:
                manifest.complete(shard)
    failed = manifest.failed()
    if not failed and not manifest.record.written_rows():
        manifest.finish()
        raise UserError(f"every row was skipped, none is left to probe: {manifest.record.skipped_rows}")
    if not failed:
        _finish_derived_labels(config, manifest)
    manifest.finish()
    if failed:
        print(f"raypipe: {len(failed)} shard(s) failed: {', '.join(failed)}; rerun the same command to retry them "
              f"(manifest: {manifest.path})", file=sys.stderr, flush=True)
        return 1
    print(f"raypipe: done; manifest at {manifest.path}", flush=True)
    print(next_steps(config.out_dir, bool(manifest.record.labels)), flush=True)
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


def _finish_derived_labels(config: BuildConfig, manifest: BuildManifest) -> None:
    """Thresholds of derived labels are chosen on the train split once every shard is complete (never rewriting
    a shard); the manifest records them and the derived labels' counts."""
    labels = manifest.record.labels
    if not any(definition.derived_from for definition in labels.values()):
        return
    build = Build(config.out_dir, manifest.record)
    splits = [split for split, record in manifest.record.splits.items() if record.rows]

    def values_of(split: str, name: str):
        return build.tensors(split, [LABEL_PREFIX + name])[LABEL_PREFIX + name].double().numpy()

    finish_derived(labels, values_of, splits)


def plan_placement(config: BuildConfig, inputs: BuildInputs):
    from transformers import AutoConfig

    nodes, notes = cluster_nodes(config.gpu_memory_gb)
    if any(node.gpus for node in nodes):
        hf_config = AutoConfig.from_pretrained(resolve_model_path(config.model.model_id),
                                               trust_remote_code=config.model.trust_remote_code)
        shape = model_shape(hf_config, bytes_per_value=4 if config.model.dtype == "float32" else 2)
    else:
        shape = ModelShape(0.0, 0.0)
    placement = place(config.model, shape, nodes, config.backend, config.placement)
    return dataclasses.replace(placement, notes=placement.notes + tuple(notes))


def execute(config: BuildConfig, inputs: BuildInputs, pending: list[ShardPlan],
            manifest: BuildManifest | None = None):
    """Stream the pending shards through the stages (topology.stage_specs: the list for this placement) on Ray Data;
    yield their records (output.ShardRecord) as shards are written. A shard whose stage actor died on it more often
    than Ray's task retries allow never comes back from Ray Data; it is yielded as failed, so that the rest of the
    build still finishes."""
    import ray

    connect()
    placement = plan_placement(config, inputs)
    print(f"raypipe: placement {placement.describe()}", flush=True)
    if manifest is not None:
        manifest.record_run({"placement": placement.to_dict()})
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # one line per stage from raypipe instead of Ray Data's blocks
    context.print_on_execution_start = False
    context.max_errored_blocks = len(pending)  # a lost shard is reported failed; the others still finish
    stages = stage_names(config)
    board = start_board(stages, len(pending), sum(len(p.indices) for p in pending))
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")  # max_restarts, max_task_retries
    # The sources' tables go to the object store once; a list keeps Ray from resolving the reference early. They go
    # with each call, not into the actor's constructor, so that a restarted actor (its node lost) needs none.
    sources = {key: dataclasses.replace(source, table=[ray.put(source.table)])
               for key, source in inputs.sources.items()}
    ds = ray.data.from_items([shard_row(p) for p in pending], override_num_blocks=len(pending))
    for spec in stage_specs(config, inputs, placement, progress=board, sources=sources):
        in_flight = {} if spec.concurrency is None else {"max_tasks_in_flight_per_actor": spec.concurrency}
        ds = ds.map_batches(spec.stage, compute=ray.data.ActorPoolStrategy(size=spec.actors, **in_flight),
                            **spec.map_arguments())
    returned = set()
    print(f"raypipe: streaming {len(pending)} shards", flush=True)
    with ProgressPrinter(board, stages):
        for row in ds.iter_rows():
            shard = ShardRecord.from_json(json.loads(row["entry"]))
            returned.add((shard.split, shard.name))
            yield shard
    for plan in pending:
        if (plan.split, plan.name) not in returned:
            tries = ACTOR_TASK_RETRIES + 1
            yield ShardRecord(split=plan.split, name=shard_name(plan.index), status=FAILED, attempts=tries,
                              error=f"lost: the actor running it died on it {tries} times (a fatal error such as "
                                    "running out of device memory; see Ray's logs)")

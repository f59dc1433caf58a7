"""A build's pipeline as data: which stages run, in which order, on which actor pools with which resources.

`stage_specs(config, inputs, placement)` is a pure function (no Ray): the ordered list of `StageSpec`s that
`pipeline.execute` hands to Ray Data's `map_batches`, one shard per call. Each placement gives its own list:

    cpu, separate   prepare -> rollout -> label -> prefill -> write    (each stage its own actor pool)
    colocated       prepare -> engine (rollout + prefill on the same GPUs) -> label -> write
    --backend none  the same without the rollout (nothing is generated)

Every stage's actors are restarted when they die (`max_restarts`), and a shard whose actor ended on a fatal error
is given to a fresh one `ACTOR_TASK_RETRIES` times, then reported failed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from raypipe.config import BuildConfig
from raypipe.placement import Placement
from raypipe.positions import rollout_markers
from raypipe.stages.colocated import ColocatedStage
from raypipe.stages.label import LabelStage
from raypipe.stages.prefill import PrefillStage
from raypipe.stages.prepare import PrepareStage
from raypipe.stages.rollout import RolloutStage
from raypipe.stages.write import WriteStage

ACTOR_TASK_RETRIES = 2  # times Ray Data gives a shard to a fresh actor after its actor ended on a fatal error


@dataclass(frozen=True)
class StageSpec:
    """One `map_batches` call: the stage class, its constructor's and each call's arguments, its actor pool."""

    name: str  # the progress board's name for it
    stage: type
    constructor: dict[str, Any]
    actors: int = 1
    num_gpus: float = 0
    num_cpus: float = 1
    concurrency: int | None = None  # shards one actor holds at once (async engine stages)
    call: dict[str, Any] = field(default_factory=dict)  # fn_kwargs: what goes with each call

    def map_arguments(self) -> dict[str, Any]:
        """The keyword arguments of `Dataset.map_batches` but `compute` (a Ray object, made by the caller)."""
        arguments = {"batch_size": 1, "num_gpus": self.num_gpus, "num_cpus": self.num_cpus,
                     "fn_constructor_kwargs": self.constructor, "fn_kwargs": self.call,
                     # Bounded: a shard that kills every actor it meets must end as failed, not restart actors
                     # forever (Ray 2.60 has no named parameter for these, only **ray_remote_args).
                     "max_restarts": -1, "max_task_retries": ACTOR_TASK_RETRIES}
        if self.concurrency is not None:
            arguments["max_concurrency"] = self.concurrency
        return arguments


def stage_names(config: BuildConfig) -> list[str]:
    """What the progress board shows, one per logical stage (a colocated engine reports rollout and prefill)."""
    return [stage for stage in ("prepare", "rollout", "label", "prefill", "write")
            if stage != "rollout" or config.backend != "none"]


def stage_specs(config: BuildConfig, inputs, placement: Placement, progress=None,
                sources: dict | None = None) -> list[StageSpec]:
    """The stages of this build on this placement, in order. `inputs`: the build's resolved layers, positions and
    planned labels (plan.BuildInputs); `progress`: the board's actor handle; `sources`: what the prepare stage reads
    rows from, sent with each call so that a restarted actor needs nothing from its constructor."""
    model, retries = config.model, config.max_retries
    rollout = {"model_id": model.model_id, "model": model, "seed": config.source.seed, "backend": config.backend,
               "retries": retries, "rollout_markers": rollout_markers(inputs.positions),
               "missing_marker": config.features.missing_marker, "progress": progress}
    prefill = {"model_id": model.model_id, "dtype": model.dtype, "layers": inputs.layers,
               "positions": inputs.positions, "batch_tokens": model.prefill_batch_tokens,
               "trust_remote_code": model.trust_remote_code, "retries": retries, "progress": progress}
    engines = {"actors": max(placement.engines, 1), "num_gpus": placement.gpus_per_engine, "num_cpus": 1,
               "concurrency": model.shards_in_flight}
    # Tokenizing a shard takes milliseconds, labelling and writing are light: zero CPUs, so that they never wait
    # behind the model actors for a slot.
    specs = [StageSpec("prepare", PrepareStage, {"config": config, "positions": inputs.positions,
                                                 "retries": retries, "progress": progress},
                       num_cpus=0, call={"sources": sources})]
    if config.backend == "none":
        pass  # no rollouts: not a token is generated
    elif placement.mode == "colocated":
        vllm_share = dataclasses.replace(model, vllm=dataclasses.replace(
            model.vllm, gpu_memory_utilization=placement.vllm_memory_utilization))
        specs.append(StageSpec("engine", ColocatedStage, {
            "rollout": {**{k: v for k, v in rollout.items() if k != "progress"}, "model": vllm_share},
            "prefill": {**{k: v for k, v in prefill.items() if k != "progress"},
                        "max_memory_gb": placement.prefill_memory_gb},
            "progress": progress}, **engines))
    else:
        specs.append(StageSpec("rollout", RolloutStage, rollout, **engines))
    specs.append(StageSpec("label", LabelStage, {"loop_n": model.loop_n, "loop_k": model.loop_k,
                                                 "labels": config.labels, "planned": inputs.labels,
                                                 "progress": progress}, num_cpus=0))
    if placement.mode != "colocated":
        specs.append(StageSpec("prefill", PrefillStage, prefill, actors=placement.prefill_actors,
                               num_gpus=placement.gpus_per_prefill, num_cpus=1))
    specs.append(StageSpec("write", WriteStage, {"out_dir": config.out_dir, "retries": retries,
                                                 "progress": progress}, num_cpus=0))
    return specs

"""The pipeline as data (raypipe.topology): for each placement, which stages run in which order, on which actor
pools with which resources and constructor arguments; no Ray, no model."""

import dataclasses
from types import SimpleNamespace

import pytest

from raypipe.config import DEFAULT_PRESET, BuildConfig, get_preset
from raypipe.output import LabelDefinition
from raypipe.placement import Placement
from raypipe.topology import ACTOR_TASK_RETRIES, stage_names, stage_specs

INPUTS = SimpleNamespace(layers=[0, 30], positions=[-1, "rollout:</think>"], labels={"loop": LabelDefinition(kind="binary")})
BOARD, SOURCES = object(), {"train": object()}


def _config(**changes) -> BuildConfig:
    model = dataclasses.replace(get_preset(DEFAULT_PRESET), shards_in_flight=3)
    return dataclasses.replace(BuildConfig(out_dir="o", model=model), **changes)


def _specs(placement: Placement, **changes):
    specs = stage_specs(_config(**changes), INPUTS, placement, progress=BOARD, sources=SOURCES)
    return {spec.name: spec for spec in specs}, [spec.name for spec in specs]


def test_cpu_and_separate_placements_give_each_stage_its_own_pool():
    cpu, order = _specs(Placement("cpu", engines=2, gpus_per_engine=0, prefill_actors=1, gpus_per_prefill=0))
    assert order == ["prepare", "rollout", "label", "prefill", "write"]
    assert (cpu["rollout"].actors, cpu["rollout"].num_gpus, cpu["rollout"].concurrency) == (2, 0, 3)
    assert cpu["rollout"].constructor["rollout_markers"] == ["</think>"]
    assert cpu["rollout"].constructor["progress"] is BOARD
    assert [cpu[name].num_cpus for name in order] == [0, 1, 0, 1, 0]  # light stages never wait behind the models
    assert cpu["prepare"].call == {"sources": SOURCES} and "sources" not in cpu["prepare"].constructor
    separate, _ = _specs(Placement("separate", engines=4, gpus_per_engine=2, prefill_actors=3, gpus_per_prefill=1))
    assert (separate["rollout"].actors, separate["rollout"].num_gpus) == (4, 2)
    assert (separate["prefill"].actors, separate["prefill"].num_gpus) == (3, 1)
    assert separate["prefill"].constructor["layers"] == [0, 30] and separate["prefill"].concurrency is None


def test_colocated_engines_prefill_on_their_own_gpus_with_their_share_of_memory():
    placement = Placement("colocated", engines=8, gpus_per_engine=1, prefill_actors=0, gpus_per_prefill=0,
                          vllm_memory_utilization=0.62, prefill_memory_gb=18.5)
    specs, order = _specs(placement)
    assert order == ["prepare", "engine", "label", "write"]
    engine = specs["engine"]
    assert (engine.actors, engine.num_gpus, engine.concurrency) == (8, 1, 3)
    rollout, prefill = engine.constructor["rollout"], engine.constructor["prefill"]
    assert rollout["model"].vllm.gpu_memory_utilization == 0.62 and prefill["max_memory_gb"] == 18.5
    assert "progress" not in rollout and "progress" not in prefill and engine.constructor["progress"] is BOARD
    assert get_preset(DEFAULT_PRESET).vllm.gpu_memory_utilization != 0.62  # the preset itself is left alone


def test_backend_none_generates_nothing():
    specs, order = _specs(Placement("cpu", engines=0, gpus_per_engine=0, prefill_actors=2, gpus_per_prefill=0),
                          backend="none")
    assert order == ["prepare", "label", "prefill", "write"] and specs["prefill"].actors == 2
    assert stage_names(_config(backend="none")) == ["prepare", "label", "prefill", "write"]
    assert stage_names(_config()) == ["prepare", "rollout", "label", "prefill", "write"]


@pytest.mark.parametrize("mode", ["cpu", "separate", "colocated"])
def test_every_stage_restarts_its_actors_and_bounds_a_shards_retries(mode):
    placement = Placement(mode, engines=1, gpus_per_engine=1 if mode != "cpu" else 0, prefill_actors=1,
                          gpus_per_prefill=0, vllm_memory_utilization=0.5, prefill_memory_gb=4.0)
    for spec in stage_specs(_config(), INPUTS, placement):
        arguments = spec.map_arguments()
        assert arguments["batch_size"] == 1 and arguments["max_restarts"] == -1
        assert arguments["max_task_retries"] == ACTOR_TASK_RETRIES
        assert ("max_concurrency" in arguments) == (spec.concurrency is not None)

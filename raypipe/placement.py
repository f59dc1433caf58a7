"""Which actor gets which devices on a given cluster: a pure function of the model's shape, its run settings and the
cluster's nodes, so that every case (one GPU, one 8-GPU node, several nodes, 40 GB or 80 GB devices) is unit-tested.

Modes:
  cpu        no GPUs: `dp` engine actors and a pool of prefill actors on CPUs (the embedded default).
  colocated  each engine actor holds `tp` GPUs and runs both the rollouts (vLLM) and the prefill features of its
             shards (Transformers, its layers spread over the same GPUs). vLLM's `gpu_memory_utilization` is lowered
             to leave room for the Transformers copy of the weights and one prefill batch's activations.
  separate   engines on `tp` GPUs each; prefill actors on GPUs of their own, each spanning as many GPUs as the
             weights need. Chosen when colocation leaves vLLM too little KV cache, when there is nothing to generate
             (`--backend none`: every GPU prefills), or when asked for.

Why colocated first: the rollout pool of a preset holds every GPU of its hardware (dp=8 x tp=1 on an 8-GPU node,
tp=8 on one, any preset on one GPU), so a prefill pool asking for GPUs of its own cannot start until the last rollout
ends, and nothing is written until then. Colocated, a shard is written as soon as its own rollouts are done. Prefill
is a small share of the work (prompts of hundreds of tokens against rollouts of thousands), so GPUs dedicated to it
would idle most of the time; sharing them costs only the memory below.

Per GPU of an engine (M = device memory, W = bf16 weights, tp GPUs per engine), colocated:
  Transformers copy   W / tp x 1.1 (uneven layer split) + PREFILL_ACTIVATIONS_GB + CUDA_CONTEXT_GB
  vLLM                gpu_memory_utilization = (M - the above) / M, capped at the preset's value
  vLLM's KV cache     u x M - W / tp - VLLM_OVERHEAD_GB, which must hold MIN_FULL_SEQUENCES sequences of
                      max_model_len tokens
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from raypipe.errors import UserError

PREFILL_ACTIVATIONS_GB = 4.0  # one prefill batch (16k tokens): hidden states and the MLP's intermediate, transient
CUDA_CONTEXT_GB = 1.0  # a second process on the GPU (the actor's own, beside vLLM's engine core): context, slack
VLLM_OVERHEAD_GB = 1.5  # vLLM's activations, CUDA graphs and allocator slack beside weights and KV cache
MIN_FULL_SEQUENCES = 2  # the KV cache must hold at least this many sequences of max_model_len tokens
DEFAULT_GPU_MEMORY_GB = 80.0  # when no GPU can be asked (logical GPUs in tests): say so, assume an 80 GB device


@dataclass(frozen=True)
class ModelShape:
    """What placement needs to know about a model: its weights and its KV cache per token, both in GB (bf16)."""

    weights_gb: float
    kv_gb_per_token: float  # all layers, all KV heads


@dataclass(frozen=True)
class Node:
    gpus: int
    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB


@dataclass(frozen=True)
class Placement:
    mode: str  # cpu | colocated | separate
    engines: int  # engine actors (rollout replicas); 0 when nothing is generated
    gpus_per_engine: int
    prefill_actors: int  # separate and cpu modes: the prefill pool; colocated: 0 (each engine prefills)
    gpus_per_prefill: int
    vllm_memory_utilization: float | None = None  # what vLLM may take of each of its GPUs
    prefill_memory_gb: float | None = None  # per GPU, for the Transformers copy: its device_map's max_memory
    kv_cache_gb: float | None = None  # vLLM's KV cache per GPU left by this placement
    notes: tuple[str, ...] = field(default_factory=tuple)
    backend: str = "vllm"

    def describe(self) -> str:
        if self.mode == "cpu":
            text = f"cpu: {self.engines} engine actor(s) and {self.prefill_actors} prefill actor(s) on CPUs"
        elif self.mode == "colocated" and self.backend != "vllm":
            text = (f"colocated: {self.engines} {self.backend} engine actor(s) x {self.gpus_per_engine} GPU(s), each "
                    f"also prefilling its shards with the same model")
        elif self.mode == "colocated":
            text = (f"colocated: {self.engines} engine actor(s) x {self.gpus_per_engine} GPU(s), each also "
                    f"prefilling its shards on the same GPUs (vLLM takes {self.vllm_memory_utilization:.2f} of each "
                    f"GPU, KV cache {self.kv_cache_gb:.1f} GB per GPU; Transformers up to "
                    f"{self.prefill_memory_gb:.1f} GB per GPU)")
        else:
            text = (f"separate: {self.engines} engine actor(s) x {self.gpus_per_engine} GPU(s), "
                    f"{self.prefill_actors} prefill actor(s) x {self.gpus_per_prefill} GPU(s)")
        return text + "".join(f"; {note}" for note in self.notes)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self), "notes": list(self.notes), "description": self.describe()}


def model_shape(hf_config, bytes_per_value: int = 2) -> ModelShape:
    """Weights and KV cache per token of a HF config, from its parameter count on the meta device (no memory)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters())
    text = hf_config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    kv_per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * bytes_per_value
    return ModelShape(parameters * bytes_per_value / 1e9, kv_per_token / 1e9)


def _engines_that_fit(nodes: list[Node], gpus_per_engine: int) -> int:
    return sum(node.gpus // gpus_per_engine for node in nodes)


def _prefill_span(shape: ModelShape, gpu_memory_gb: float) -> int:
    """GPUs one prefill actor needs for the weights (with an uneven-split margin) and one batch's activations."""
    return max(1, math.ceil((shape.weights_gb * 1.1 + PREFILL_ACTIVATIONS_GB + CUDA_CONTEXT_GB) / gpu_memory_gb))


def colocated_memory(shape: ModelShape, tp: int, gpu_memory_gb: float, max_utilization: float, max_model_len: int):
    """(vLLM utilization, Transformers GB per GPU, KV cache GB per GPU, KV GB needed per GPU) when colocated."""
    prefill_gb = shape.weights_gb / tp * 1.1 + PREFILL_ACTIVATIONS_GB
    utilization = min(max_utilization, (gpu_memory_gb - prefill_gb - CUDA_CONTEXT_GB) / gpu_memory_gb)
    kv = utilization * gpu_memory_gb - shape.weights_gb / tp - VLLM_OVERHEAD_GB
    needed = MIN_FULL_SEQUENCES * max_model_len * shape.kv_gb_per_token / tp
    return utilization, prefill_gb, kv, needed


def place(model, shape: ModelShape, nodes: list[Node], backend: str = "vllm", mode: str = "auto") -> Placement:
    """The placement of a build's actors on these nodes; a UserError (naming the arithmetic) when nothing fits.

    `model` is a ModelConfig (dp, prefill_actors, max_model_len and the vllm group are read).
    """
    if mode not in ("auto", "colocated", "separate"):
        raise UserError(f"--placement must be auto, colocated or separate, got {mode!r}")
    gpu_nodes = [node for node in nodes if node.gpus > 0]
    generates = backend != "none"
    if not gpu_nodes:
        return Placement("cpu", model.dp if generates else 0, 0, model.prefill_actors, 0, backend=backend)
    memory = min(node.gpu_memory_gb for node in gpu_nodes)
    total = sum(node.gpus for node in gpu_nodes)
    notes: list[str] = []
    if not generates:
        span = _prefill_span(shape, memory)
        actors = _engines_that_fit(gpu_nodes, span)
        if actors == 0:
            raise UserError(f"a prefill actor needs {span} GPUs of {memory:.0f} GB on one node for "
                            f"{shape.weights_gb:.1f} GB of weights; the largest node has "
                            f"{max(n.gpus for n in gpu_nodes)}")
        return Placement("separate", 0, 0, actors, span, notes=("nothing to generate: every GPU prefills",),
                         backend=backend)

    tp = model.vllm.tp if backend == "vllm" else 1  # the hf engine runs on one device
    largest = max(node.gpus for node in gpu_nodes)
    if tp > largest:
        raise UserError(f"tp={tp} needs {tp} GPUs on one node (an engine's tensor-parallel workers share a node); "
                        f"the largest node here has {largest}: lower --tp")
    utilization, prefill_gb, kv, needed = colocated_memory(shape, tp, memory, model.vllm.gpu_memory_utilization,
                                                           model.max_model_len)
    if mode == "colocated" or (mode == "auto" and kv >= needed):
        if kv < needed:
            raise UserError(f"colocated on {memory:.0f} GB GPUs with tp={tp}, vLLM keeps {max(kv, 0):.1f} GB of KV "
                            f"cache per GPU, below the {needed:.1f} GB that {MIN_FULL_SEQUENCES} sequences of "
                            f"{model.max_model_len} tokens need: raise --tp, lower --max-model-len, or use "
                            f"--placement separate")
        engines = min(model.dp, _engines_that_fit(gpu_nodes, tp))
        if engines < model.dp:
            notes.append(f"dp {model.dp} lowered to {engines}: the cluster holds {engines} engine(s) of {tp} GPU(s)")
        idle = total - engines * tp
        if idle:
            notes.append(f"{idle} GPU(s) left idle: pass --dp {engines + idle // tp} to use them" if idle >= tp
                         else f"{idle} GPU(s) left idle")
        return Placement("colocated", engines, tp, 0, 0, round(utilization, 3), round(prefill_gb, 2),
                         round(kv, 2), tuple(notes), backend)

    # separate: prefill actors on GPUs of their own, taken from the cluster before the engines
    span = _prefill_span(shape, memory)
    if mode == "auto":
        notes.append(f"colocation would leave vLLM {max(kv, 0):.1f} GB of KV cache per GPU, below {needed:.1f} GB")
    prefill_actors, remaining = 0, []
    for node in sorted(gpu_nodes, key=lambda n: n.gpus):  # one prefill actor, on the smallest node that holds it
        if prefill_actors == 0 and node.gpus >= span:
            remaining.append(Node(node.gpus - span, node.gpu_memory_gb))
            prefill_actors = 1
        else:
            remaining.append(node)
    if prefill_actors == 0:
        raise UserError(f"a prefill actor needs {span} GPUs of {memory:.0f} GB on one node for "
                        f"{shape.weights_gb:.1f} GB of weights; the largest node has {largest}")
    engines = min(model.dp, _engines_that_fit(remaining, tp))
    if engines == 0:
        raise UserError(f"after {span} GPU(s) for prefill, no node has the {tp} GPU(s) an engine needs "
                        f"({total} GPUs in all): use a larger cluster or lower --tp")
    if engines < model.dp:
        notes.append(f"dp {model.dp} lowered to {engines}")
    idle = total - span - engines * tp
    if idle:
        notes.append(f"{idle} GPU(s) left idle")
    kv_separate = model.vllm.gpu_memory_utilization * memory - shape.weights_gb / tp - VLLM_OVERHEAD_GB
    return Placement("separate", engines, tp, prefill_actors, span, model.vllm.gpu_memory_utilization, None,
                     round(kv_separate, 2), tuple(notes), backend)

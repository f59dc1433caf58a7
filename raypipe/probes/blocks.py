"""(layer, position) cells as blocks of work that run where the GPUs and the data are.

The driver plans: it splits the layers into blocks (`block_layers` layers, every position, by default one layer),
puts the small inputs every block needs (labels, folds, which rows to keep) in Ray's object store once, and gathers
what comes back. Each block is a Ray task that asks for a GPU when the cluster has any (else a CPU), opens the build
itself, reads only its own slices of every shard, fits its cells and returns their scores and predictions, with a
record of where it ran (node, device), how long it took and its peak memory. Beside the blocks, Ray tasks stream
every shard file through sha256, so no process ever holds a whole file. `executor="local"` runs the very same block
function in this process, one block after another (no Ray), for small builds and for comparisons.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from raypipe import cluster
from raypipe.cluster import where
from raypipe.errors import UserError
from raypipe.output import Build


@dataclass(frozen=True)
class Block:
    index: int
    layers: tuple[int, ...]  # indices into the probe's layer list; every position of each


def plan_blocks(n_layers: int, block_layers: int) -> list[Block]:
    return [Block(i, tuple(range(start, min(start + block_layers, n_layers))))
            for i, start in enumerate(range(0, n_layers, block_layers))]


def pick_device(requested: str) -> str:
    """The torch device of this process: 'auto' takes a CUDA device when this process has one."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but the process that fits the probes has no CUDA device")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def run_block(work: Callable, shared: Any, block: Block, device: str) -> dict:
    """One block where it runs: `work(shared, block, device)` plus the record of where, how long, how much memory."""

    started = time.time()
    device = pick_device(device)
    result = work(shared, block, device)
    if device == "cuda":
        import torch

        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.empty_cache()
    result["ran"] = {**where(device), "block": block.index, "layers": list(block.layers), "started": started,
                     "seconds": time.time() - started, "peak_rss_mb": _peak_rss_mb()}
    return result


def _verify(data_dir: str, files: list[tuple[str, str]]) -> None:
    build = Build(data_dir)
    for relative, expected in files:
        build.verify_file(relative, expected)


def run_blocks(work: Callable, shared: Any, blocks: list[Block], build, executor: str, device: str) -> list[dict]:
    """Every block's result, in block order, after every shard file the blocks read has passed its sha256."""
    if executor == "local":
        build.verify()
        return [run_block(work, shared, block, device) for block in blocks]
    import ray

    cluster.connect()
    gpu = cluster.use_gpu(device)
    task = ray.remote(run_block).options(num_gpus=1 if gpu else 0, num_cpus=1, max_retries=2)
    shared_ref = ray.put(shared)
    checks = submit_checks(build)
    pending = [task.remote(work, shared_ref, block, device) for block in blocks]
    try:
        _get(checks)
        return _get(pending)
    except Exception:
        for ref in pending:
            ray.cancel(ref)
        raise


def submit_checks(build, splits: list[str] | None = None) -> list:
    """Ray tasks that stream every shard file of these splits through sha256, on the cluster's workers: one task per
    CPU of the cluster at most, each checking its share of the files."""
    import ray

    files = build.files(splits)
    tasks = max(1, min(len(files), int(ray.cluster_resources().get("CPU", 1))))
    verify = ray.remote(_verify).options(num_cpus=0.5)  # fractional, yet never on a head that keeps no CPUs
    return [verify.remote(build.out_dir, files[i::tasks]) for i in range(tasks)]


def _get(refs: list) -> list:
    """ray.get, with a user's mistake found where a task ran (a corrupt shard, no CUDA device) as its one line."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(getattr(exc, "cause", None), UserError):
            raise exc.cause from None
        raise


def verify_on_cluster(build, splits: list[str] | None = None) -> None:
    _get(submit_checks(build, splits))

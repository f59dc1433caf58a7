"""Joining Ray, for every command: build, train, sweep, evaluate, finetune and experiments all come through here.

`connect()` joins RAY_ADDRESS (as under `ray job submit`), an address given on the command line, or the cluster the
last `ray start` recorded on this machine, else starts a local Ray. A recorded head that has died would make
`ray.init()` retry its address for minutes: it is checked first, and the command stops with one line that names the
address and the ways out. The same module answers what the cluster has (its nodes and their GPUs) and the one
"use a GPU?" decision every command makes, and says where a piece of work ran (`where()`).
"""

from __future__ import annotations

import logging
import os

from raypipe.errors import UserError
from raypipe.placement import DEFAULT_GPU_MEMORY_GB, Node

# Passed to every Ray worker, which takes its environment from its node, not from the driver that joins: the test-only
# fault hook of the stages (stages/base.py), vLLM's CPU cache size, and the user's W&B switch (offline / disabled
# wins on a cluster too). Never a secret: a job's runtime environment is shown by Ray's dashboard and job records.
FORWARDED_ENV = ("RAYPIPE_INJECT_FAULT", "RAYPIPE_INJECT_FAULT_STATE", "VLLM_CPU_KVCACHE_SPACE", "WANDB_MODE")


def connect(address: str | None = None, quiet: bool = True) -> None:
    """Join a cluster or start a local one (once per process; later calls do nothing).

    quiet: Ray's own detail (actor logs, engine start-up, Ray Data's execution) goes to its log files and the
    console shows raypipe's lines; off, worker output is shown on the driver's console (the finetune's epochs).
    """
    import ray

    if ray.is_initialized():
        return
    target = address or recorded_address()
    if target is not None and not _answers(target):
        origin = "given with --address" if address else _address_origin()
        raise UserError(f"Ray would join the cluster at {target} ({origin}), but nothing answers there: its head has "
                        "died. Run `ray stop` to clear the record, or set RAY_ADDRESS=local for a fresh local "
                        "cluster (or RAY_ADDRESS=HOST:PORT for a live one)")
    env_vars = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    ray.init(address=address, log_to_driver=not quiet, logging_level=logging.ERROR if quiet else logging.INFO,
             runtime_env={"env_vars": env_vars} if env_vars else None)
    if quiet:
        import ray.data

        for handler in logging.getLogger("ray.data").handlers:  # Ray Data keeps writing everything to ray-data.log
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.ERROR)
    print(f"raypipe: Ray {'joined at ' + target if target else 'started locally'}; its logs: {_log_dir()}",
          flush=True)


def recorded_address() -> str | None:
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

    if address.startswith(("ray://", "http://", "https://")) or address in ("auto", "local"):
        return True  # not a GCS address: ray.init reports its own failures for these
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _log_dir() -> str:
    import ray

    try:
        return os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    except Exception:  # noqa: BLE001 - a joined cluster's session folder lives on its head
        return "the head node's /tmp/ray/session_latest/logs"


# --- what the cluster has ------------------------------------------------------------------------------------------

def gpu_counts() -> list[int]:
    """GPUs of each alive node (logical GPUs included: what Ray schedules on)."""
    import ray

    return [int(node["Resources"].get("GPU", 0)) for node in ray.nodes() if node.get("Alive")]


def has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def use_gpu(requested: bool | str | None = None) -> bool:
    """The one "use a GPU?" decision: an explicit True/False (or 'cuda'/'cpu') wins, a GPU asked for on a cluster
    without one being an error; None or 'auto' asks the cluster (Ray schedules the work onto a GPU when it has
    any). Call it after `connect()`."""
    if requested in (True, "cuda"):
        if not has_gpus():  # asked for, absent: the work would wait for a GPU forever
            raise UserError("a GPU was asked for (--device cuda / use_gpu true), but the Ray cluster has none")
        return True
    if requested in (False, "cpu"):
        return False
    if requested not in (None, "auto"):
        raise UserError(f"device must be auto, cpu or cuda, got {requested!r}")
    return has_gpus()


def nodes(gpu_memory_gb: float | None) -> tuple[list, list[str]]:
    """The alive nodes' GPUs (placement.Node), and notes on how their memory was known."""

    counts = gpu_counts()
    notes = []
    if any(counts) and gpu_memory_gb is None:
        gpu_memory_gb = device_memory_gb()
        if gpu_memory_gb is None:
            gpu_memory_gb = DEFAULT_GPU_MEMORY_GB
            notes.append(f"no CUDA device answered for its memory (logical GPUs?); assumed {gpu_memory_gb:.0f} GB, "
                         "set --gpu-memory-gb")
    return [Node(gpus, gpu_memory_gb or 0.0) for gpus in counts], notes


def device_memory_gb() -> float | None:
    """Total memory of one GPU of the cluster, asked of a GPU task (None where no CUDA device is behind the GPU)."""
    import ray

    def memory() -> float | None:
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 1e9 if torch.cuda.is_available() else None

    try:
        return ray.get(ray.remote(num_gpus=1, num_cpus=0)(memory).remote(), timeout=300)
    except Exception:  # noqa: BLE001 - then the default, and the caller says so
        return None


def where(device: str | None = None) -> dict:
    """Where this process runs: Ray node id and address, host, pid, and the torch device it computes on."""
    import socket

    info = {"host": socket.gethostname(), "pid": os.getpid(), "device": device}
    try:
        import ray

        if ray.is_initialized():
            context = ray.get_runtime_context()
            info["node_id"] = context.get_node_id()
            info["node_ip"] = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info

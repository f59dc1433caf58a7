"""What every shard stage shares: one shard per call, declared input columns, retries, per-stage stats, progress,
and errors that retrying cannot fix.

A stage is a callable class for Ray Data's `map_batches` (expensive set-up in `__init__`, as in `ray.data.llm`).
`work(shard)` does the stage's job on a shard dict and may return numbers for its stats. Around it:

- a shard that an earlier stage failed passes by untouched;
- a failing `work` is retried `retries` times on this actor; if it still fails, the shard carries `error` and
  `attempts` through the later stages, which pass it by, and the build reports it failed while the others finish;
- an error that retrying here cannot fix (the engine died, the device ran out of memory, a CUDA error) ends the
  actor process at once: Ray Data starts a replacement actor and gives it the same shard (`max_task_retries`),
  instead of burning the retries on a broken actor;
- each stage records `stats[stage] = {start, end, seconds, node, pid, attempts, ...}` in the shard (the manifest keeps
  them: a build's timeline), and tells the build's progress board.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from typing import Any, ClassVar

from raypipe.output.layout import shard_name
from raypipe.payload import get_shard, put_shard

FAULT_ENV = "RAYPIPE_INJECT_FAULT"
FAULT_STATE_ENV = "RAYPIPE_INJECT_FAULT_STATE"  # folder remembering fatal faults already injected (across actors)

# Exception type names and message fragments of errors that leave the actor unusable.
FATAL_TYPES = {"OutOfMemoryError", "EngineDeadError", "AcceleratorError", "DeadEngineError"}
FATAL_MESSAGES = ("CUDA out of memory", "CUDA error", "NCCL error", "device-side assert", "EngineCore encountered",
                  "engine is dead", "Engine loop has died")


def is_fatal(exc: BaseException) -> bool:
    """Whether an error leaves this actor unusable, so that only a fresh actor can do the work."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in FATAL_TYPES or any(text in str(exc) for text in FATAL_MESSAGES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def describe(stage: str, exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{stage}: {type(exc).__name__}: {message}"[:500]


def node_id() -> str | None:
    """The Ray node this process runs on (recorded per stage: how a build spread over a cluster)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


class ShardStage:
    """Base of the pipeline's stages; subclasses set `name` and `inputs` and implement `work`."""

    name: ClassVar[str] = "stage"
    inputs: ClassVar[tuple[str, ...]] = ()  # shard columns this stage reads; missing ones fail the shard clearly

    def __init__(self, retries: int = 0, progress=None):
        self.retries = retries
        self.progress = progress  # a ProgressBoard actor handle, or None

    def work(self, shard: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return put_shard(self.run(get_shard(batch)))

    def run(self, shard: dict[str, Any]) -> dict[str, Any]:
        """`work` with the checks, retries, fatal-error handling and stats described in the module docstring."""
        # The one retry loop is a coroutine (`_attempts`); with a `work` that returns a plain value it never awaits,
        # so it completes on its first step, without an event loop (a colocated engine calls this from a thread).
        coroutine = self._attempts(shard)
        try:
            coroutine.send(None)
        except StopIteration as done:
            return done.value
        coroutine.close()
        raise TypeError(f"{type(self).__name__}.work awaited: an async stage runs through run_async")

    async def _attempts(self, shard: dict[str, Any]) -> dict[str, Any]:
        if shard.get("error"):
            return shard
        started, error, attempt, metrics = time.time(), self._missing(shard), 0, None
        for attempt in range(1, 0 if error else self.retries + 2):
            try:
                inject_fault(self.name, shard, attempt)
                result = self.work(shard)
                metrics = (await result if inspect.isawaitable(result) else result) or {}
                error = None
                break
            except Exception as exc:  # noqa: BLE001 - recorded on the shard, or fatal for the actor
                error = self._failed(shard, exc)
        return self._record(shard, started, attempt, error, metrics)

    def _missing(self, shard: dict[str, Any]) -> str | None:
        missing = [column for column in self.inputs if column not in shard]
        return f"{self.name}: the shard lacks input column(s) {', '.join(missing)}" if missing else None

    def _failed(self, shard: dict[str, Any], exc: BaseException) -> str:
        if is_fatal(exc):
            self.die(shard, exc)
        return describe(self.name, exc)

    def _record(self, shard: dict[str, Any], started: float, attempt: int, error: str | None,
                metrics: dict[str, Any] | None) -> dict[str, Any]:
        stats = {"start": round(started, 3), "end": round(time.time(), 3), "node": node_id(), "pid": os.getpid(),
                 "attempts": attempt}
        stats["seconds"] = round(stats["end"] - stats["start"], 3)
        shard.setdefault("stats", {})[self.name] = {**stats, **(metrics or {})}
        if attempt > 1 and error is None:
            shard.setdefault("retried", {})[self.name] = attempt - 1
        if error:
            shard["error"], shard["attempts"] = error, attempt
        self.report(shard, metrics or {}, failed=bool(error))
        return shard

    def die(self, shard: dict[str, Any], exc: BaseException) -> None:
        """End this actor's process: Ray Data replaces the actor and retries the shard on the new one."""
        print(f"raypipe: {shard_label(shard)}: {describe(self.name, exc)}; this actor is unusable, ending it so "
              f"that Ray replaces it", file=sys.stderr, flush=True)
        os._exit(70)

    def report(self, shard: dict[str, Any], metrics: dict[str, Any], failed: bool) -> None:
        if self.progress is not None:
            self.progress.report.remote(self.name, len(shard.get("row_id", [])), metrics.get("tokens", 0),
                                        shard["stats"][self.name]["seconds"], failed)


class AsyncShardStage(ShardStage):
    """A stage whose `work` is a coroutine: Ray Data runs several shards on one actor at once (its engine stays
    full while one shard's stragglers finish); each shard is still whole and atomic."""

    async def work(self, shard: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError

    async def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return put_shard(await self.run_async(get_shard(batch)))

    async def run_async(self, shard: dict[str, Any]) -> dict[str, Any]:
        """As `run`, awaiting `work`: the same retry loop."""
        return await self._attempts(shard)


def shard_label(shard: dict[str, Any]) -> str:
    return f"{shard['split']}/{shard_name(shard['index'])}"


def inject_fault(stage: str, shard: dict[str, Any], attempt: int) -> None:
    """Testing hook: RAYPIPE_INJECT_FAULT="rollout:train/shard-00001[:N[:fatal]],..." fails that stage of that shard
    on its first N attempts (every attempt without N), so the retry and failure paths run on the real pipeline.
    `fatal` raises an out-of-memory error once per shard (remembered in RAYPIPE_INJECT_FAULT_STATE), which ends the
    actor."""
    specs = os.environ.get(FAULT_ENV, "")
    if not specs:
        return
    name = shard_label(shard)
    for spec in filter(None, specs.split(",")):
        parts = spec.split(":")
        if (stage, name) != (parts[0], parts[1]):
            continue
        if len(parts) > 3 and parts[3] == "fatal":
            marker = os.path.join(os.environ.get(FAULT_STATE_ENV, "/tmp"), f"fatal-{stage}-{name.replace('/', '-')}")
            if not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))  # the actor that is about to end
                import torch

                raise torch.cuda.OutOfMemoryError(f"injected fatal fault in {stage} of {name}")
            continue
        failing_attempts = int(parts[2]) if len(parts) > 2 else None
        if failing_attempts is None or attempt <= failing_attempts:
            raise RuntimeError(f"injected fault in {stage} of {name}, attempt {attempt}")

"""What a user sees while a build runs: one progress bar (on a terminal) or line (in a log) per stage.

Stages report each finished shard to a `ProgressBoard`, a zero-CPU Ray actor; the driver's `ProgressPrinter` reads
it every few seconds. Ray Data's own progress blocks are switched off, and Ray's detail stays in its log files.
"""

from __future__ import annotations

import sys
import threading
import time


class Board:
    """Counts per stage: shards done, failed, rows, tokens, and when the stage's work began."""

    def __init__(self, stages: list[str], shards: int, rows: int):
        self.shards, self.rows = shards, rows
        self.stages = {stage: {"shards": 0, "failed": 0, "rows": 0, "tokens": 0, "first_start": None, "last": None}
                       for stage in stages}

    def report(self, stage: str, rows: int, tokens: int, seconds: float, failed: bool) -> None:
        now = time.time()
        state = self.stages.setdefault(stage, {"shards": 0, "failed": 0, "rows": 0, "tokens": 0,
                                               "first_start": None, "last": None})
        state["shards"] += 1
        state["failed"] += int(failed)
        state["rows"] += rows
        state["tokens"] += tokens
        start = now - seconds
        state["first_start"] = start if state["first_start"] is None else min(state["first_start"], start)
        state["last"] = now

    def snapshot(self) -> dict:
        return {"shards": self.shards, "rows": self.rows, "stages": self.stages}


def start_board(stages: list[str], shards: int, rows: int):
    import ray

    return ray.remote(num_cpus=0)(Board).remote(stages, shards, rows)


def format_stage(stage: str, state: dict, shards: int) -> str:
    text = f"{stage} {state['shards']}/{shards}"
    if state["failed"]:
        text += f" ({state['failed']} failed)"
    if state["tokens"] and state["first_start"] is not None and state["last"] > state["first_start"]:
        text += f", {state['tokens'] / (state['last'] - state['first_start']):,.0f} tok/s"
    return text


class ProgressPrinter:
    """Context manager: a thread that shows the board, as tqdm bars on a terminal or a line per change in a log."""

    def __init__(self, board, stages: list[str], interval: float = 2.0, log_every: float = 15.0, stream=None):
        self.board, self.stages, self.interval, self.log_every = board, stages, interval, log_every
        self.stream = stream or sys.stdout
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.bars = None

    def __enter__(self) -> ProgressPrinter:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self._show(final=True)
        if self.bars:
            for bar in self.bars.values():
                bar.close()

    def _snapshot(self) -> dict | None:
        import ray

        try:
            return ray.get(self.board.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - progress is best effort; the build's own lines still print
            return None

    def _loop(self) -> None:
        last_line, last_time = None, 0.0
        while not self.stop.wait(self.interval):
            line = self._show(final=False, previous=(last_line, last_time))
            if line is not None:
                last_line, last_time = line, time.time()

    def _show(self, final: bool, previous=(None, 0.0)) -> str | None:
        snapshot = self._snapshot()
        if snapshot is None:
            return None
        stages = snapshot["stages"]
        if self.stream.isatty():
            self._bars(snapshot)
            return None
        line = "raypipe: " + " | ".join(format_stage(s, stages[s], snapshot["shards"]) for s in self.stages)
        if final or (line != previous[0] and time.time() - previous[1] >= self.log_every):
            print(line, file=self.stream, flush=True)
            return line
        return None

    def _bars(self, snapshot: dict) -> None:
        from tqdm import tqdm

        if self.bars is None:
            self.bars = {stage: tqdm(total=snapshot["shards"], desc=f"{stage:8s}", unit="shard", position=i,
                                     file=self.stream, leave=True, dynamic_ncols=True)
                         for i, stage in enumerate(self.stages)}
        for stage, bar in self.bars.items():
            state = snapshot["stages"][stage]
            bar.n = state["shards"]
            rate = format_stage(stage, state, snapshot["shards"]).partition(", ")[2]
            bar.set_postfix_str(f"{state['rows']} rows" + (f", {rate}" if rate else ""), refresh=False)
            bar.refresh()

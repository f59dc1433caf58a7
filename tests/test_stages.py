"""The shard-stage base (no model, no Ray): retries, declared inputs, per-stage stats, and fatal errors that end
the actor instead of burning the shard's retries."""

import asyncio

import pytest
import torch

from raypipe.progress import Board, format_stage
from raypipe.stages.base import AsyncShardStage, ShardStage, is_fatal


class Flaky(ShardStage):
    name = "flaky"
    inputs = ("row_id",)

    def __init__(self, failures: int, retries: int, error=RuntimeError("boom")):
        super().__init__(retries)
        self.failures, self.error, self.calls = failures, error, 0

    def work(self, shard):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        shard["done"] = True
        return {"tokens": 7}


def _shard(**extra):
    return {"split": "train", "index": 3, "row_id": [1, 2], **extra}


def test_a_failure_is_retried_and_the_stats_say_so():
    shard = Flaky(failures=1, retries=2).run(_shard())
    assert shard["done"] and "error" not in shard and shard["retried"] == {"flaky": 1}
    stats = shard["stats"]["flaky"]
    assert stats["attempts"] == 2 and stats["tokens"] == 7 and stats["end"] >= stats["start"]
    assert stats["seconds"] >= 0 and isinstance(stats["pid"], int)


class AsyncFlaky(AsyncShardStage):
    """Flaky's async twin: the engine stages' path (run_async), through the same retry loop."""

    name = "flaky"
    inputs = ("row_id",)

    def __init__(self, failures: int, retries: int):
        super().__init__(retries)
        self.failures, self.calls = failures, 0

    async def work(self, shard):
        await asyncio.sleep(0)  # a real suspension, as an engine's generate has
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("boom")
        shard["done"] = True
        return {"tokens": 7}


def test_an_async_stage_retries_through_the_same_loop():
    stage = AsyncFlaky(failures=1, retries=2)
    shard = asyncio.run(stage.run_async(_shard()))
    assert shard["done"] and shard["retried"] == {"flaky": 1} and shard["stats"]["flaky"]["attempts"] == 2
    failed = asyncio.run(AsyncFlaky(failures=9, retries=1).run_async(_shard()))
    assert failed["attempts"] == 2 and failed["error"] == "flaky: RuntimeError: boom"
    with pytest.raises(TypeError, match="an async stage runs through run_async"):
        ShardStage.run(AsyncFlaky(failures=0, retries=0), _shard())  # a sync caller of an awaiting work


def test_retries_run_out_and_the_shard_carries_its_error_past_later_stages():
    stage = Flaky(failures=5, retries=2)
    shard = stage.run(_shard())
    assert stage.calls == 3 and shard["attempts"] == 3 and shard["error"] == "flaky: RuntimeError: boom"
    later = Flaky(failures=0, retries=0)
    assert later.run(shard) is shard and later.calls == 0 and "done" not in shard


def test_a_missing_input_column_fails_the_shard_clearly():
    stage = Flaky(failures=0, retries=2)
    shard = stage.run({"split": "train", "index": 0})
    assert stage.calls == 0 and shard["error"] == "flaky: the shard lacks input column(s) row_id"


@pytest.mark.parametrize("error, fatal", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
    (type("EngineDeadError", (Exception,), {})("EngineCore died"), True),
    (ValueError("a prompt of 3 tokens has no position -5"), False),
    (RuntimeError("injected fault"), False),
])
def test_which_errors_are_fatal(error, fatal):
    assert is_fatal(error) is fatal


def test_a_fatal_error_wrapped_in_another_is_still_fatal():
    try:
        try:
            raise torch.cuda.OutOfMemoryError("out of memory")
        except Exception as inner:
            raise RuntimeError("prefill failed") from inner
    except RuntimeError as outer:
        assert is_fatal(outer)


def test_a_fatal_error_ends_the_actor_at_once(monkeypatch, capsys):
    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr("os._exit", fake_exit)
    stage = Flaky(failures=5, retries=2, error=torch.cuda.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(SystemExit):
        stage.run(_shard())
    assert exits == [70] and stage.calls == 1  # no retry on a broken actor
    assert "train/shard-00003" in capsys.readouterr().err


def test_the_progress_board_counts_per_stage():
    board = Board(["rollout", "prefill"], shards=4, rows=40)
    board.report("rollout", 10, 500, 5.0, failed=False)
    board.report("rollout", 10, 500, 5.0, failed=True)
    state = board.snapshot()["stages"]["rollout"]
    assert (state["shards"], state["failed"], state["rows"], state["tokens"]) == (2, 1, 20, 1000)
    line = format_stage("rollout", state, 4)
    assert line.startswith("rollout 2/4 (1 failed), ") and line.endswith(" tok/s")
    assert format_stage("prefill", board.snapshot()["stages"]["prefill"], 4) == "prefill 0/4"

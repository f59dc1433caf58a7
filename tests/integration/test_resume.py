"""Interrupt a build anywhere, run it again, get the uninterrupted result: kill, corruption, failing shards."""

import json
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
from raypipe.store import load_split, read_manifest
from tests.conftest import REPO, run_cli
from tests.integration.conftest import BUILD_ARGS, assert_same_dataset


def _complete(out) -> int:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return sum(s["status"] == "complete" for d in manifest["splits"].values() for s in d["shards"].values())


def test_sigkill_after_the_first_shard_then_rerun_equals_an_uninterrupted_run(local_build, tmp_path):
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-m", "raypipe.build", *BUILD_ARGS, "--out-dir", str(out)], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while _complete(out) == 0 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done_at_kill = _complete(out)
    assert 1 <= done_at_kill < 4, "the kill should land mid-build"

    rerun = run_cli("raypipe.build", *BUILD_ARGS, "--out-dir", str(out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{done_at_kill} already complete, {4 - done_at_kill} to build" in rerun.stdout
    assert_same_dataset(out, local_build)
    assert not list(out.rglob(".*.tmp-*"))

    # A shard altered on disk is found by its sha256 on the next run and rebuilt.
    victim = out / "train" / "shard-00001.safetensors"
    victim.write_bytes(victim.read_bytes()[:-10])
    rerun = run_cli("raypipe.build", *BUILD_ARGS, "--out-dir", str(out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "shard-00001.safetensors is corrupt" in rerun.stdout and "3 already complete, 1 to build" in rerun.stdout
    assert_same_dataset(out, local_build)


def test_failing_shards_are_retried_reported_and_rerun_alone_and_bad_rows_counted(tmp_path):
    train, test, out = tmp_path / "train.parquet", tmp_path / "test.parquet", tmp_path / "out"
    good = [f"What is {i} plus {i + 1}?" for i in range(9)]
    pq.write_table(pa.table({"question": good + ["", None, "word " * 3000]}), train)
    pq.write_table(pa.table({"question": ["What is 1+1?", "Name a fruit.", "Count to three."]}), test)
    args = ["--train-dataset", str(train), "--test-dataset", str(test), "--prompt-field", "question",
            "--shard-size", "5", "--max-tokens", "16", "--out-dir", str(out)]

    # train/shard-00001 fails in prefill on every attempt; test/shard-00000's rollout fails once, then succeeds;
    # train/shard-00000's prefill hits a fatal error (out of device memory) once: its actor must end at once and a
    # fresh one do the shard, without spending the shard's retries.
    faults = "prefill:train/shard-00001,rollout:test/shard-00000:1,prefill:train/shard-00000:1:fatal"
    first = run_cli("raypipe.build", *args,
                    env={"RAYPIPE_INJECT_FAULT": faults, "RAYPIPE_INJECT_FAULT_STATE": str(tmp_path)})
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "1 shard(s) failed: train/shard-00001" in first.stderr
    manifest = read_manifest(out)
    failed = manifest["splits"]["train"]["shards"]["shard-00001"]
    assert failed["status"] == "failed" and failed["attempts"] == 3 and "injected fault in prefill" in failed["error"]
    recovered = manifest["splits"]["test"]["shards"]["shard-00000"]
    assert recovered["status"] == "complete" and recovered["retried"] == {"rollout": 1}
    replaced = manifest["splits"]["train"]["shards"]["shard-00000"]
    marker = tmp_path / "fatal-prefill-train-shard-00000"
    assert marker.exists(), "the fatal fault was never injected"
    assert replaced["status"] == "complete" and "retried" not in replaced and replaced["stats"]["prefill"]["attempts"] == 1
    assert replaced["stats"]["prefill"]["pid"] != int(marker.read_text())  # a fresh actor did it
    assert manifest["skipped_rows"]["train"] == {"empty_prompt": 1, "missing_prompt": 1, "prompt_too_long": 1}
    assert load_split(out, "train")["row_id"].tolist() == [0, 1, 2, 3, 4]  # only complete shards are read
    status = run_cli("raypipe.cli", "status", str(out))
    assert "train: 1 complete, 1 failed" in status.stdout

    second = run_cli("raypipe.build", *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 already complete, 1 to build" in second.stdout
    assert load_split(out, "train")["row_id"].tolist() == list(range(9))
    assert all(s["status"] == "complete" for d in read_manifest(out)["splits"].values() for s in d["shards"].values())

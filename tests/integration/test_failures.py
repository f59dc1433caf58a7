"""Failing shards on the real pipeline: retried, a fatal error replaces the actor, the rest finishes, a rerun builds
only the failed one; bad rows are counted; all of it holds for a named evaluation split as for train and test. (Kill-and-resume: test_job_submit.py and test_gpu_placement.py; damaged
shards found on resume: tests/test_manifest.py.)"""

import pyarrow as pa
import pyarrow.parquet as pq

from raypipe.output import load_split
from tests.conftest import manifest_json, run_cli


def test_failing_shards_are_retried_reported_and_rerun_alone_and_bad_rows_counted(tmp_path, shared_ray,
                                                                                   tiny_tp_model):
    train, test, out = tmp_path / "train.parquet", tmp_path / "test.parquet", tmp_path / "out"
    good = [f"What is {i} plus {i + 1}?" for i in range(9)]
    pq.write_table(pa.table({"question": good + ["", None, "word " * 3000]}), train)
    pq.write_table(pa.table({"question": ["What is 1+1?", "Name a fruit.", "Count to three."]}), test)
    ood = tmp_path / "ood.parquet"  # an evaluation split with a bad row, whose one shard fails every attempt
    pq.write_table(pa.table({"question": ["Spell cat.", "", "What is 2+2?", "Name a colour."]}), ood)
    # The hf backend on the tiny random-weight model: these paths are the stages', not the engine's or the model's,
    # and it starts in seconds.
    args = ["--train-dataset", str(train), "--test-dataset", str(test), "--prompt-field", "question", "--backend", "hf",
            "--model-id", str(tiny_tp_model), "--layers", "-1",
            "--shard-size", "5", "--max-tokens", "16", "--out-dir", str(out), "--eval-split", f"ood={ood}"]

    # train/shard-00001 fails in prefill on every attempt; test/shard-00000's rollout fails once, then succeeds;
    # train/shard-00000's prefill hits a fatal error (out of device memory) once: its actor must end at once and a
    # fresh one do the shard, without spending the shard's retries.
    # The prepare actor ends on train/shard-00002 (fatal, once): Ray restarts it from its constructor's arguments and
    # the restarted actor prepares the shard.
    faults = ("prefill:train/shard-00001,rollout:test/shard-00000:1,prefill:train/shard-00000:1:fatal,"
              "prepare:train/shard-00002:1:fatal,prefill:ood/shard-00000")
    first = run_cli("raypipe.build", *args,
                    env={**shared_ray, "RAYPIPE_INJECT_FAULT": faults,
                         "RAYPIPE_INJECT_FAULT_STATE": str(tmp_path)})
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "2 shard(s) failed:" in first.stderr and "train/shard-00001" in first.stderr, first.stderr[-2000:]
    assert "ood/shard-00000" in first.stderr
    manifest = manifest_json(out)
    failed = manifest["splits"]["train"]["shards"]["shard-00001"]
    assert failed["status"] == "failed" and failed["attempts"] == 3 and "injected fault in prefill" in failed["error"]
    recovered = manifest["splits"]["test"]["shards"]["shard-00000"]
    assert recovered["status"] == "complete" and recovered["retried"] == {"rollout": 1}
    replaced = manifest["splits"]["train"]["shards"]["shard-00000"]
    marker = tmp_path / "fatal-prefill-train-shard-00000"
    assert marker.exists(), "the fatal fault was never injected"
    assert replaced["status"] == "complete" and "retried" not in replaced and replaced["stats"]["prefill"]["attempts"] == 1
    assert replaced["stats"]["prefill"]["pid"] != int(marker.read_text())  # a fresh actor did it
    restarted = manifest["splits"]["train"]["shards"]["shard-00002"]
    assert restarted["status"] == "complete"
    assert restarted["stats"]["prepare"]["pid"] != int((tmp_path / "fatal-prepare-train-shard-00002").read_text())
    # Shards are cut from row indices: shard 1 holds rows 5-9 (9 is empty), shard 2 rows 10-11 (missing, too long),
    # so shard 2 is complete with no row left, and the empty prompt is counted once shard 1 is.
    assert manifest["skipped_rows"]["train"] == {"missing_prompt": 1, "prompt_too_long": 1}
    assert manifest["splits"]["train"]["shards"]["shard-00002"]["rows"] == 0
    assert load_split(out, "train")["row_id"].tolist() == [0, 1, 2, 3, 4]  # only complete shards are read
    assert manifest["splits"]["ood"]["shards"]["shard-00000"]["status"] == "failed"
    status = run_cli("raypipe.cli", "status", str(out))
    assert "train: 2 complete, 1 failed" in status.stdout and "ood: 1 failed" in status.stdout

    second = run_cli("raypipe.build", *args, env=shared_ray)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "3 already complete, 2 to build" in second.stdout
    assert load_split(out, "train")["row_id"].tolist() == list(range(9))
    manifest = manifest_json(out)
    assert manifest["skipped_rows"]["train"] == {"empty_prompt": 1, "missing_prompt": 1, "prompt_too_long": 1}
    assert manifest["skipped_rows"]["ood"] == {"empty_prompt": 1}
    assert load_split(out, "ood")["row_id"].tolist() == [0, 2, 3]
    assert all(s["status"] == "complete" for d in manifest["splits"].values() for s in d["shards"].values())

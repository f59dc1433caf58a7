"""Helpers of the simulated GPU clusters: logical GPUs (`Cluster.add_node(num_gpus=...)`, `ray start --num-gpus`)
make Ray place GPU-asking actors exactly as on GPUs while the work runs on the CPU."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from raypipe.output import load_split
from tests.conftest import REPO, manifest_json, run_cli


@contextlib.contextmanager
def logical_gpu_env():
    """The environment a simulated GPU cluster's nodes start in: no CUDA_VISIBLE_DEVICES. Logical GPUs have no device
    behind them, and Ray refuses a node that declares more GPUs than the caller's mask lists (an empty mask: none)."""
    hidden = os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    try:
        yield
    finally:
        if hidden is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = hidden


def complete_shards(out: Path) -> dict[str, dict]:
    """'split/name' -> manifest entry of every complete shard (empty while there is no manifest)."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {f"{split}/{name}": shard for split, data in manifest["splits"].items()
            for name, shard in data["shards"].items() if shard["status"] == "complete"}


def wait_for_first_shard(out: Path, alive, timeout: float = 900) -> dict[str, dict]:
    """Poll the manifest until a shard is complete (or the build ends); `alive()` is asked every few seconds."""
    deadline, asked = time.time() + timeout, 0.0
    while not (done := complete_shards(out)) and time.time() < deadline:
        if time.time() - asked > 3:
            if not alive():
                return complete_shards(out)
            asked = time.time()
        time.sleep(0.2)
    return done


def assert_streamed(out: Path) -> None:
    """The first shard was written before the last rollout ended: shards land while the engines still generate."""
    shards = [s for d in manifest_json(out)["splits"].values() for s in d["shards"].values()]
    first_written = min(s["stats"]["write"]["end"] for s in shards)
    last_rollout = max(s["stats"]["rollout"]["end"] for s in shards)
    assert first_written < last_rollout, (first_written, last_rollout)


def assert_written_shards_survive(out: Path, before: dict[str, dict]) -> None:
    """Every shard complete before the interruption is still complete, with the same files (sha256), and loads."""
    after = complete_shards(out)
    for name, entry in before.items():
        assert name in after and after[name]["files"] == entry["files"], name
    for split in {name.split("/")[0] for name in before}:
        load_split(out, split)  # verifies every sha256


def kill_after_first_shard_then_resume(args: list[str], out: Path, env: dict, log: Path) -> tuple[dict, str]:
    """SIGKILL a build's driver once its first shard is complete; check that nothing written was lost; run the same
    command again to completion. Returns (shards complete at the kill, the rerun's stdout)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    with open(log, "w") as sink:
        driver = subprocess.Popen([sys.executable, "-m", "raypipe.build", *args, "--out-dir", str(out)], cwd=REPO,
                                  env=full_env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        done = wait_for_first_shard(out, lambda: driver.poll() is None)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert done, log.read_text()[-3000:]
    total = sum(1 for d in manifest_json(out)["splits"].values() for _ in d["shards"])
    assert len(done) < total, "the kill should land mid-build"
    assert_written_shards_survive(out, done)
    rerun = run_cli("raypipe.build", *args, "--out-dir", str(out), env=env)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert_written_shards_survive(out, done)
    assert all(s["status"] == "complete" for d in manifest_json(out)["splits"].values() for s in d["shards"].values())
    return done, rerun.stdout


def ray_worker_errors(limit: int = 40) -> str:
    """The error lines of the latest Ray session's worker logs (an engine's death is told there, not to the driver)
    and /dev/shm's size and use (vLLM's tp workers talk through it): what a failed build's assertion adds."""
    logs = Path(os.environ.get("RAY_TMPDIR", "/tmp"), "ray", "session_latest", "logs")
    markers = ("Error", "error:", "Fatal", "fatal", "Bus error", "Segmentation", "Insufficient", "raypipe:", "Killed")
    lines: list[str] = []
    for path in sorted(logs.glob("worker-*.err")) + sorted(logs.glob("worker-*.out")):
        for line in path.read_text(errors="replace").splitlines():
            if any(m in line for m in markers) and line not in lines:
                lines.append(line[:300])
    shm = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
    size = (f"/dev/shm: {shm.f_blocks * shm.f_frsize >> 20} MiB, {shm.f_bavail * shm.f_frsize >> 20} MiB free"
            if shm else "no /dev/shm")
    return f"\n--- {size}; Ray's worker errors ({logs}):\n" + "\n".join(lines[-limit:])

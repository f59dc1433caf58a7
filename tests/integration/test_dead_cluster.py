"""A head that died without `ray stop` leaves its record behind; a build must not hang retrying it."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, run_cli


@pytest.fixture
def dead_head():
    """A `ray start --head` killed by SIGKILL: its cluster record stays in its RAY_TMPDIR, nothing answers."""
    ray_tmp = tempfile.mkdtemp(prefix="rp-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=1", "--include-dashboard=false"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    record = Path(ray_tmp) / "ray" / "ray_current_cluster"
    deadline = time.time() + 120
    while not record.exists() and time.time() < deadline and head.poll() is None:
        time.sleep(0.5)
    assert record.exists(), "the head never wrote its cluster record"
    os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=60)
    time.sleep(2)
    yield env, record.read_text().strip()
    subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_dead_recorded_cluster_fails_fast_naming_the_address_and_the_ways_out(dead_head, tmp_path):
    env, address = dead_head
    started = time.time()
    result = run_cli("raypipe.build", "--builtin-size", "4", "--max-tokens", "8", "--out-dir", str(tmp_path / "o"),
                     env=env, timeout=300)
    elapsed = time.time() - started
    lines = [line for line in result.stderr.splitlines() if line.startswith("raypipe: error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert address in lines[0] and "ray stop" in lines[0] and "RAY_ADDRESS=local" in lines[0]
    assert elapsed < 120, f"took {elapsed:.0f} s"  # the model is prepared first; Ray's own retries take minutes

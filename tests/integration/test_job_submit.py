"""`ray job submit -- python -m raypipe.build ...` against a local `ray start --head` cluster, as on a real one."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.conftest import BUILD_ARGS, assert_same_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    # The job's `python` is the one on the PATH the head was started with: put this venv first.
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    gcs_port, dashboard_port = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rp-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    head = subprocess.Popen(
        [os.path.join(bin_dir, "ray"), "start", "--head", "--block", f"--port={gcs_port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=2",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        probe = subprocess.run([os.path.join(bin_dir, "ray"), "job", "list", "--address", address],
                               env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            break
        assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
        time.sleep(2)
    else:
        pytest.fail("the Ray head did not come up: " + (tmp_path / "head.log").read_text()[-3000:])
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(timeout=120)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submit_builds_the_same_dataset_as_a_local_run(ray_head, local_build, tmp_path):
    """Submitted as a job, writing through a pyarrow filesystem URI, the build equals the local one."""
    address, env = ray_head
    out = f"file://{tmp_path / 'job_out'}"
    result = subprocess.run(
        ["ray", "job", "submit", "--address", address, "--", "python", "-m", "raypipe.build", *BUILD_ARGS,
         "--out-dir", out],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "succeeded" in result.stdout
    assert_same_dataset(out, local_build)

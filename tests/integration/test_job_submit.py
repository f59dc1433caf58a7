"""`ray job submit -- python -m raypipe.build ...` against a local `ray start --head` cluster with one (logical) GPU,
as users run it on a one-GPU machine: the engine and the prefill share the GPU, shards stream, a stopped job loses
nothing it wrote, and the resubmitted job finishes the same dataset as a local run."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.integration.conftest import BUILD_ARGS, assert_same_dataset


@pytest.fixture
def ray_head(tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    # The job's `python` is the one on the PATH the head was started with: put this venv first.
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)  # a logical GPU: see simulation.logical_gpu_env
    gcs_port, dashboard_port = free_port(), free_port()
    # Every port a head listens on, not only the two above: the job agent's default (52365) is fixed, and a Ray still
    # shutting down from an earlier test may hold it; an agent that cannot bind it never registers, and every submit
    # is then answered "No available agent" (seen in CI).
    agent_ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                   f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    temp_dir = tempfile.mkdtemp(prefix="rp-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    head = subprocess.Popen(
        [os.path.join(bin_dir, "ray"), "start", "--head", "--block", f"--port={gcs_port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=2", "--num-gpus=1",
         "--node-ip-address=127.0.0.1", *agent_ports, f"--temp-dir={temp_dir}"],
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
    # A graceful stop took half a minute (it waits on every worker); nothing of this head is kept, so after a few
    # seconds its processes, all of which name its temp folder, are killed.
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
    subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _job_active(address, env, job_id) -> bool:
    status = subprocess.run(["ray", "job", "status", "--address", address, job_id], env=env, capture_output=True,
                            text=True).stdout
    return "RUNNING" in status or "PENDING" in status


def _submit(address, env, out, wait: bool, command_args: list[str] | None = None):
    """`ray job submit` of the build (or of `command_args`); a head whose job agent has not registered yet answers
    "No available agent ... try again later" (seen on a loaded machine seconds after `ray start`): that answer alone
    is retried, for up to 2 minutes."""
    command = ["ray", "job", "submit", "--address", address]
    if not wait:
        command.append("--no-wait")
    deadline = time.time() + 120
    while True:
        job = command_args or ["python", "-m", "raypipe.build", *BUILD_ARGS, "--out-dir", out]
        result = subprocess.run([*command, "--", *job],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode == 0 or "No available agent" not in result.stderr or time.time() > deadline:
            return result
        time.sleep(3)


def test_one_gpu_job_streams_survives_a_stop_and_resubmits_to_the_local_result(ray_head, local_build, tmp_path):
    """On one GPU the engine holds it: prefill shares it (colocated), so shards land from the first minutes; a job
    stopped after its first shard keeps that shard; resubmitted, it finishes the dataset a local run builds."""
    from tests.conftest import manifest_json
    from tests.integration.simulation import assert_streamed, assert_written_shards_survive, wait_for_first_shard

    address, env = ray_head
    folder = tmp_path / "job_out"
    out = f"file://{folder}"  # written through a pyarrow filesystem URI, as on a cluster's shared storage
    submitted = _submit(address, env, out, wait=False)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    job_id = re.search(r"(raysubmit_\w+)", submitted.stdout)[1]
    done = wait_for_first_shard(folder, lambda: _job_active(address, env, job_id))
    subprocess.run(["ray", "job", "stop", "--address", address, job_id], env=env, capture_output=True, timeout=300)
    logs = subprocess.run(["ray", "job", "logs", "--address", address, job_id], env=env, capture_output=True,
                          text=True).stdout
    assert done, logs[-3000:]
    assert "placement colocated: 1 engine actor(s) x 1 GPU(s)" in logs, logs[-3000:]
    assert_written_shards_survive(folder, done)

    resubmitted = _submit(address, env, out, wait=True)
    assert resubmitted.returncode == 0 and "succeeded" in resubmitted.stdout, resubmitted.stdout[-4000:]
    assert re.search(r"(\d+) already complete", resubmitted.stdout)
    assert_written_shards_survive(folder, done)
    assert manifest_json(out)["runs"][-1]["placement"]["mode"] == "colocated"
    assert_streamed(folder)
    assert_same_dataset(out, local_build)

    # A probe swept on the local build, saved, and scored on the job's build as a job: the same rows, the same scores.
    import numpy as np
    import pyarrow.parquet as pq

    from raypipe.output import Build
    from raypipe.probes.config import SweepConfig
    from raypipe.probes.saved import load_saved_probe
    from raypipe.probes.sweep import run_sweep

    run_sweep(SweepConfig(data_dir=str(local_build), out_dir=str(tmp_path / "sweep"), executor="local", n_folds=2,
                          resamples=50))
    probe_path = str(tmp_path / "sweep" / "probe.safetensors")
    scored = _submit(address, env, out, wait=True, command_args=[
        "python", "-m", "raypipe.cli", "score", probe_path, "--data-dir", out, "--out-dir", str(tmp_path / "scored"),
        "--resamples", "50"])
    assert scored.returncode == 0 and "succeeded" in scored.stdout, scored.stdout[-4000:]
    probe, build = load_saved_probe(probe_path), Build(out)  # the job's build, read as the job read it
    layer, position = build.layers.index(probe.card["layer"]), build.positions.index(probe.card["position"])
    rows = pq.read_table(tmp_path / "scored" / "scores.parquet").to_pandas()
    for split in build.splits():
        expected = probe.predict(build.features(split, [layer], [position])[:, 0, 0].numpy())
        np.testing.assert_allclose(rows[rows["split"] == split]["score"], expected, atol=1e-5)

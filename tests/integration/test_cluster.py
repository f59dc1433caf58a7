"""Several Ray nodes on one machine (`ray.cluster_utils.Cluster`): the build spreads over them and survives the loss
of the node running its vLLM actor, through Ray's retries or a rerun."""

import json
import os
import subprocess
import sys
import time

import pytest

from raypipe.store import read_manifest
from tests.conftest import REPO, run_cli
from tests.integration.conftest import BUILD_ARGS, assert_same_dataset


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    # The head runs no actors; three 1-CPU workers hold the rollout actor, the prefill actor and one spare.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()


def _first_complete(out):
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    done = [s for d in manifest["splits"].values() for s in d["shards"].values() if s["status"] == "complete"]
    return done[0] if done else None


def test_build_spreads_over_nodes_and_survives_losing_the_rollout_node(cluster, local_build, tmp_path):
    cluster, workers = cluster
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "raypipe.build", *BUILD_ARGS, "--out-dir", str(out)],
                              cwd=REPO, env=env, stdout=open(tmp_path / "driver.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while (first := _first_complete(out)) is None and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
    assert first is not None, (tmp_path / "driver.log").read_text()[-3000:]
    rollout_node, prefill_node = first["stats"]["rollout"]["node"], first["stats"]["prefill"]["node"]
    worker_ids = {w.node_id: w for w in workers}
    assert rollout_node in worker_ids and prefill_node in worker_ids and rollout_node != prefill_node

    cluster.remove_node(worker_ids[rollout_node])
    removed_at = time.time()
    code = driver.wait(timeout=900)
    if code != 0:  # Ray could not finish the run after the loss: a rerun must complete it
        rerun = run_cli("raypipe.build", *BUILD_ARGS, "--out-dir", str(out), env={"RAY_ADDRESS": cluster.address})
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert_same_dataset(out, local_build)
    shards = [s for d in read_manifest(out)["splits"].values() for s in d["shards"].values()]
    after_loss = [s for s in shards if s["stats"]["rollout"]["end"] > removed_at]
    assert after_loss, "the node was removed after every rollout had ended: the loss was not mid-run"
    assert all(s["stats"]["rollout"]["node"] != rollout_node for s in after_loss)

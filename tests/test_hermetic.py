"""The suite is hermetic: the caller's environment (an offline hub, an empty hub cache, a RAY_ADDRESS naming a dead
head, a W&B key without WANDB_MODE, no visible GPU) changes nothing a test sees, because tests/conftest.py sets the
suite's own before anything reads it. Here a few unit tests that would see such a leak run in a subprocess under all
of those at once, so a regression shows in every run."""

import os
import subprocess
import sys

from tests.conftest import REPO, SUITE_ENV, free_port

# Tests whose outcome these variables change: the hub push (offline mode refuses its requests), the W&B key's source
# (the environment's key or the .env's), a CLI run, and the check of the suite's environment, which fails when the
# caller's leaks in (the first two set what they need themselves).
CANARIES = ["tests/test_hermetic.py::test_the_suite_runs_in_its_own_environment",
            "tests/test_finetune_hub.py",
            "tests/test_finetune.py::test_a_wandb_key_in_dotenv_is_used_and_said_to_come_from_there",
            "tests/test_cli.py::test_unknown_preset"]


def test_the_suite_runs_in_its_own_environment():
    from raypipe.cluster import recorded_address

    assert recorded_address() is None  # a build starts its own local Ray: no address or dead record to join
    assert not [name for name in ("WANDB_API_KEY", "WANDB_MODE", "HF_TOKEN", "HF_ENDPOINT") if name in os.environ]
    for name, value in SUITE_ENV.items():
        assert os.environ[name] == value, name


def test_unit_tests_pass_under_the_environments_users_have(tmp_path):
    empty_home = tmp_path / "hf_home"
    empty_home.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(empty_home),
           "RAY_ADDRESS": f"127.0.0.1:{free_port()}", "WANDB_API_KEY": "fake-key-0123456789abcdef0123456789abcdef",
           "CUDA_VISIBLE_DEVICES": ""}
    env.pop("WANDB_MODE", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0",
                             "-m", "not integration", *CANARIES], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout

"""cluster.yaml and jobs/: what a user submits to a real GPU cluster, checked with Ray's own validation."""

import copy
import subprocess

import yaml

from raypipe.config import PRESETS
from tests.conftest import REPO


def _cluster():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(_cluster())
    validate_config(config)
    node_types = config["available_node_types"]
    assert config["head_node_type"] in node_types
    assert any("gpu" in name for name in node_types if name != config["head_node_type"])
    assert any("raypipe[gpu]" in command for command in config["setup_commands"])


def test_ray_validation_would_catch_a_mistake():
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(_cluster())
    broken["available_node_types"]["gpu_worker"]["max_wrokers"] = 4
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_jobs_exist_for_every_real_preset_and_parse():
    for name in ("qwq_32b", "openthinker3_7b", "openthinker3_1p5b"):
        script = REPO / "jobs" / f"{name}.sh"
        assert f"--preset {name}" in script.read_text() and name in PRESETS
        subprocess.run(["bash", "-n", str(script)], check=True)

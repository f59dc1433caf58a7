"""cluster.yaml and jobs/: what a user submits to a real GPU cluster, checked with Ray's own validation."""

import copy
import functools
import os
import re
import subprocess
import sys

import pytest
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


BUILD_PRESETS = ("qwq_32b", "openthinker3_7b", "openthinker3_1p5b")


def test_jobs_exist_for_every_real_preset_and_parse():
    for name in BUILD_PRESETS:
        script = REPO / "jobs" / f"{name}.sh"
        assert f"--preset {name}" in script.read_text() and name in PRESETS
        _bash_syntax_ok(script)


def _bash_syntax_ok(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


# Every job script: the variables it requires, and the `python -m ...` command it submits (with _VALUES set).
_VALUES = {"TRAIN_DATASET": "my_org/my data", "OUT_DIR": "/shared/out dir", "DATA_DIR": "/shared/build",
           "PROBE": "/shared/probe/best.safetensors", "EXP_DIR": "/shared/experiments/np"}
JOBS = {
    **{f"{name}.sh": (("TRAIN_DATASET", "OUT_DIR"),
                      ["raypipe.build", "--preset", name, "--train-dataset", "my_org/my data", "--train-split", "train",
                       "--prompt-field", "prompt", "--out-dir", "/shared/out dir"]) for name in BUILD_PRESETS},
    **{f"{command}.sh": (("DATA_DIR", "OUT_DIR"),
                         ["raypipe.cli", command, "--data-dir", "/shared/build", "--out-dir", "/shared/out dir"])
       for command in ("train", "sweep", "evaluate")},
    "score.sh": (("PROBE", "DATA_DIR", "OUT_DIR"),
                 ["raypipe.cli", "score", "/shared/probe/best.safetensors", "--data-dir", "/shared/build",
                  "--out-dir", "/shared/out dir"]),
    "finetune.sh": (("EXP_DIR",), ["raypipe.cli", "finetune", "/shared/experiments/np"]),
}
NOT_YET_A_COMMAND = {"score"}  # `raypipe score` is being written: its flags are checked once its --help exists
_REQUIRED = re.compile(r'^: "\$\{([A-Z_]+):\?([^}]*)\}"$', re.M)


def _fake_ray(tmp_path):
    """A `ray` that prints its arguments (NUL-separated) instead of submitting, first on PATH."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    ray = folder / "ray"
    ray.write_text("#!/usr/bin/env bash\nprintf '%s\\0' \"$@\"\n")
    ray.chmod(0o755)
    return f"{folder}:{os.environ['PATH']}"


def _run_job(script, path, variables, *args):
    """`env -i PATH=... VARS... bash jobs/SCRIPT ARGS...` from the repository root."""
    return subprocess.run(["env", "-i", f"PATH={path}", *(f"{k}={v}" for k, v in variables.items()),
                           "bash", f"jobs/{script}", *args], cwd=REPO, capture_output=True, timeout=30)


def test_every_job_script_is_listed_executable_and_parses():
    assert sorted(p.name for p in (REPO / "jobs").glob("*.sh")) == sorted(JOBS)
    for name, (required, _) in JOBS.items():
        script = REPO / "jobs" / name
        assert os.access(script, os.X_OK), name
        _bash_syntax_ok(script)
        assert tuple(variable for variable, _ in _REQUIRED.findall(script.read_text())) == required, name
    assert (REPO / "jobs" / "runtime_env.yaml").is_file()


@pytest.mark.parametrize("name", sorted(JOBS))
def test_a_job_refuses_without_each_required_variable(name, tmp_path):
    path = _fake_ray(tmp_path)
    messages = dict(_REQUIRED.findall((REPO / "jobs" / name).read_text()))
    for missing in JOBS[name][0]:
        result = _run_job(name, path, {k: _VALUES[k] for k in JOBS[name][0] if k != missing})
        assert result.returncode != 0 and result.stdout == b"", (missing, result)
        assert f"{missing}: {messages[missing]}" in result.stderr.decode(), (missing, result.stderr)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_a_job_submits_its_command_with_the_runtime_env_and_extra_arguments(name, tmp_path):
    required, command = JOBS[name]
    path = _fake_ray(tmp_path)
    variables = {k: _VALUES[k] for k in required}
    for address, extra in ((None, []), ("http://head:8265", ["--seed", "7", "two words"])):
        result = _run_job(name, path, {**variables, **({"RAY_ADDRESS": address} if address else {})}, *extra)
        assert result.returncode == 0, result.stderr.decode()
        submitted = result.stdout.decode().split("\0")[:-1]
        assert submitted == ["job", "submit", "--address", address or "http://127.0.0.1:8265",
                             "--runtime-env", "jobs/runtime_env.yaml", "--", "python", "-m", *command, *extra]


@functools.lru_cache(maxsize=None)
def _help_flags(*command):
    """The options `python -m MODULE [COMMAND] --help` lists (wide, so that none is cut short); None if it fails."""
    result = subprocess.run([sys.executable, "-m", *command, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "COLUMNS": "300"})
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", result.stdout)) if result.returncode == 0 else None


def _script_flags(name):
    """The options a script passes itself, and those given to it in its header's example and in the docs."""
    text = (REPO / "jobs" / name).read_text()
    submitted = text.split("python -m", 1)[1].replace("\\\n", " ")
    lines = text.splitlines() + (REPO / "docs" / "building.md").read_text().splitlines()
    examples = " ".join(line.split(f"bash jobs/{name}", 1)[1] for line in lines if f"bash jobs/{name}" in line)
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", submitted + " " + examples))


@pytest.mark.parametrize("name", sorted(JOBS))
def test_a_job_passes_only_flags_its_command_accepts(name):
    command = JOBS[name][1]
    module_and_command = tuple(command[:2]) if command[0] == "raypipe.cli" else (command[0],)
    accepted = _help_flags(*module_and_command)
    if accepted is None and module_and_command[-1] in NOT_YET_A_COMMAND:
        pytest.skip(f"`raypipe {module_and_command[-1]}` does not exist yet")
    assert accepted is not None, module_and_command
    flags = _script_flags(name)
    assert flags, name
    assert flags <= accepted, flags - accepted

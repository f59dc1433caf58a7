"""Shared fixtures and the test tiers.

- unit (everything outside tests/integration): no model, no Ray; a guard makes such a test fail if it loads the
  embedded model or a semantic model, or starts Ray. `pytest -m "not integration"` runs this tier.
- integration (tests/integration, marked automatically): the real embedded model, vLLM, Transformers and Ray.
- gpu: needs a CUDA device; skipped where there is none.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INTEGRATION = REPO / "tests" / "integration"

# The suite's environment, set before anything imports Ray, the hub client or W&B (they read it at import), and
# inherited by every subprocess and Ray node the tests start: nothing of the caller's that changes what raypipe, Ray,
# W&B or the hub do leaks in. A test that needs one of these sets it itself (a dead RAY_ADDRESS, a W&B key in .env,
# the hub stand-in's endpoint). CUDA_VISIBLE_DEVICES stays the caller's (it picks the gpu tier's device); the
# simulated GPU clusters start their nodes without it (tests/integration/simulation.py: `logical_gpu_env`).
CALLER_VARIABLES = ("RAY_ADDRESS", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_DISABLE_XET",
                    "RAYPIPE_INJECT_FAULT", "RAYPIPE_INJECT_FAULT_STATE", "RAYPIPE_EXPERIMENTS_DIR")
SUITE_ENV = {
    # No hub here, nor in CI: a call that would reach it fails at once instead of waiting on the network.
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    # The caller's hub cache (or an empty one) never decides what a test reads.
    "HF_HOME": tempfile.mkdtemp(prefix="raypipe-tests-hf-"),
    # Ray's own folder, so that no `ray start` record left on the machine (a dead head's: ray.init would try to join
    # it) decides where a build runs. Short: Ray's socket paths under it must stay under 107 bytes.
    "RAY_TMPDIR": tempfile.mkdtemp(prefix="rpt-", dir="/tmp"),
    # Loopback only: with this, Ray takes 127.0.0.1 as every node's address (heads, Cluster nodes, drivers, jobs)
    # instead of the machine's interface, and no longer rewrites a 127.0.0.1 address into it.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def hermetic_environment() -> None:
    for name in [n for n in os.environ if n in CALLER_VARIABLES or n.startswith("WANDB_")]:
        del os.environ[name]
    os.environ.update(SUITE_ENV)
    for folder in (SUITE_ENV["HF_HOME"], SUITE_ENV["RAY_TMPDIR"]):
        atexit.register(shutil.rmtree, folder, ignore_errors=True)


hermetic_environment()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("gpu") and not _cuda():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _forbidden(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a unit test may not use {what}: mark it integration (tests/integration/)")

    return refuse


@pytest.fixture(autouse=True)
def unit_tier_guard(request, monkeypatch):
    """Unit tests run with no model and no Ray: loading one or starting the other fails the test."""
    if request.node.get_closest_marker("integration"):
        return
    import raypipe.embedded
    import raypipe.labels.semantic_models

    monkeypatch.setattr(raypipe.embedded, "embedded_checkpoint", _forbidden("the embedded model"))
    monkeypatch.setattr(raypipe.labels.semantic_models, "load_embedder", _forbidden("a sentence-embedding model"))
    monkeypatch.setattr(raypipe.labels.semantic_models, "load_nli", _forbidden("an NLI model"))
    import ray  # imported (about a second, once) so that no unit test can start it

    monkeypatch.setattr(ray, "init", _forbidden("Ray"))


def free_port() -> int:
    """A loopback port nothing listens on (once the probe socket closes): for heads the tests start, or dead ones."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, timeout: float = 900, env: dict | None = None, cwd=REPO) -> subprocess.CompletedProcess:
    """Run `python -m raypipe.<module> ...` as a user would, capturing output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def embedded_path() -> str:
    from raypipe.embedded import embedded_checkpoint

    return str(embedded_checkpoint())


@pytest.fixture(scope="session")
def tokenizer(embedded_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_path)


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("raypipe: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def no_complete_shard(out_dir):
    manifest = out_dir / "manifest.json"
    if not manifest.exists():
        return True
    shards = [s for split in json.loads(manifest.read_text())["splits"].values() for s in split["shards"].values()]
    return all(s["status"] != "complete" for s in shards)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    """The suite's time per file (set-up, call and tear-down summed; a shared fixture counts where it is first set
    up) and in all, at the end of every run: the next change that costs minutes shows at once."""
    per_file: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                path = report.nodeid.split("::")[0]
                per_file[path] = per_file.get(path, 0.0) + report.duration
    if not per_file:
        return
    terminalreporter.section("time per file")
    for path, seconds in sorted(per_file.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds:8.1f} s  {path}")
    terminalreporter.write_line(f"{sum(per_file.values()):8.1f} s  in all ({len(per_file)} files)")
    if os.environ.get("RAYPIPE_CI_STARTED", "").isdigit():  # set by .ci/run before the README's command
        whole = time.time() - int(os.environ["RAYPIPE_CI_STARTED"])
        terminalreporter.write_line(f"{whole:8.1f} s  the whole test command, set-up included ({whole / 60:.1f} min; "
                                    "budget 45 min)")


def manifest_json(out_dir) -> dict:
    """A build's manifest.json as its JSON (what users and other tools read), checked to be a raypipe build's."""
    from raypipe.fs import Location
    from raypipe.output import read_manifest_json

    return read_manifest_json(Location(str(out_dir)))

"""Shared fixtures and the test tiers.

- unit (everything outside tests/integration): no model, no Ray; a guard makes such a test fail if it loads the
  embedded model or a semantic model, or starts Ray. `pytest -m "not integration"` runs this tier.
- integration (tests/integration, marked automatically): the real embedded model, vLLM, Transformers and Ray.
- gpu: needs a CUDA device; skipped where there is none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Loopback only: with this, Ray takes 127.0.0.1 as every node's address (heads, Cluster nodes, drivers, jobs) instead
# of the machine's interface, and no longer rewrites a 127.0.0.1 address into it. Subprocesses inherit it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
INTEGRATION = REPO / "tests" / "integration"


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

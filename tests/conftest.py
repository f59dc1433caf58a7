"""Shared fixtures. Unit tests need no model; integration tests run the real embedded model, vLLM and Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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

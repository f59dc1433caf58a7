"""The explorer notebook over a real build: executed headless (marimo exits non-zero when a cell fails), and served
by `raypipe explore` as users open it."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import REPO, manifest_json, run_cli

MARIMO = str(Path(sys.executable).parent / "marimo")


def test_the_notebook_runs_headless_and_shows_the_builds_labels(local_build, tmp_path, shared_ray):
    sweep = tmp_path / "sweep"
    result = run_cli("raypipe.cli", "sweep", "--data-dir", str(local_build), "--out-dir", str(sweep), "--n-folds", "2",
                     "--resamples", "50", env=shared_ray)
    assert result.returncode == 0, result.stderr[-2000:]
    # The sweep's saved probe scored on the build under Ray (the shared head), as a user scores another build.
    scored = run_cli("raypipe.cli", "score", str(sweep / "probe.safetensors"), "--data-dir", str(local_build),
                     "--out-dir", str(tmp_path / "scored"), "--resamples", "50", env=shared_ray)
    assert scored.returncode == 0, scored.stdout[-2000:] + scored.stderr[-2000:]
    assert "Wrote" in scored.stdout and "test:" in scored.stdout
    html = tmp_path / "explorer.html"
    export = subprocess.run([MARIMO, "export", "html", "--no-include-code", str(REPO / "notebooks" / "explorer.py"),
                             "-o", str(html), "-f", "--", "--data-dir", str(local_build), "--sweep-dir", str(sweep),
                             "--score-dir", str(tmp_path / "scored")],
                            capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
    page = html.read_text()  # rendered outputs only: the notebook's code is left out
    for label in manifest_json(local_build)["labels"]:
        assert label in page, label
    for section in ("Label distributions", "Rollouts", "A probe, fitted live", "roc_auc per (layer, position)",
                    "Best: layer", "test roc_auc", "Scores of a saved", "probe score"):
        assert section in page, section


def test_raypipe_explore_serves_the_notebook(local_build):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "raypipe"), "explore", str(local_build), "--app",
                               "--headless", "--port", str(port)], cwd=REPO, env={**os.environ},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, status = time.time() + 120, None
        while time.time() < deadline and server.poll() is None:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status
                break
            except OSError:
                time.sleep(1)
        assert status == 200, server.stdout.read().decode()[-2000:] if server.poll() is not None else "no answer"
    finally:
        os.killpg(server.pid, 9)
        server.wait()

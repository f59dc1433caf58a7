"""Probes on a build too big for one process: the driver's and each block task's peak memory against the features.

    .venv/bin/python bench/probe_scale.py [--rows 5600] [--out runs/scale] [--skip-build]

Makes two real builds of the embedded model (`--backend none`: prefill only, every layer x the last 8 prompt
positions, float32; built-in arithmetic questions with given label columns, so that both `raypipe sweep` and `raypipe
evaluate` have what they need), of N and 2N rows: 553 KB of features a row, so 5,600 rows are about 3 GB. Then, on a
local Ray head started here (loopback), runs `raypipe sweep` (ridge on a continuous label) and `raypipe evaluate` on
each, and reports, for each: the features' size, the driver's peak RSS (the command's process, measured by the
kernel when it ends), and the largest block task's peak RSS and its block's size (from the outputs' `blocks`).
Targets: the driver under 1.5 GB whatever the build's size, every task under its block's size + 1.5 GB, and the
same peaks at twice the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POSITIONS = "-8,-7,-6,-5,-4,-3,-2,-1"


def write_source(path: Path, rows: int) -> None:
    """Built-in arithmetic questions with label columns for the sweep (answer) and for SEP's evaluation (the
    names `raypipe evaluate` reads, derived from the questions: their values do not matter here, their size does)."""
    sys.path.insert(0, str(REPO))
    from raypipe.sources.builtin import arithmetic_problems

    with open(path, "w") as f:
        for i, row in enumerate(arithmetic_problems(rows, seed=11)):
            answer = float(row["answer"])
            f.write(json.dumps({"prompt": row["prompt"], "answer_value": answer, "correct": float(answer % 3 != 0),
                                "semantic_entropy_high": float(answer % 2 == 0),
                                "mean_token_entropy": (i % 7) / 7, "mean_logprob": -(i % 5) / 5}) + "\n")


def run(command: list[str], env: dict) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB of the process, its output): a wrapper process waits for it, so the kernel's
    RUSAGE_CHILDREN is that process alone (it joins a running head, so it starts no Ray processes of its own)."""
    wrapper = ("import resource, subprocess, sys, json\n"
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "print(json.dumps({'rc': r.returncode, 'out': r.stdout[-4000:] + r.stderr[-4000:],"
               " 'peak_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True, env=env,
                          cwd=REPO)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["rc"] != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{report['out']}")
    return time.perf_counter() - started, report["peak_kb"] / 1024, report["out"]


def features_gb(build: Path) -> float:
    return sum(p.stat().st_size for p in build.rglob("*.safetensors")) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5600)
    parser.add_argument("--out", default="runs/scale")
    parser.add_argument("--skip-build", action="store_true", help="reuse the builds already in --out")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    bin_dir = str(Path(python).parent)
    temp = tempfile.mkdtemp(prefix="rp-", dir="/tmp")  # this head's own temp folder and cluster record
    port = _free_port()
    head_env = {**env, "PATH": bin_dir + os.pathsep + env["PATH"], "RAY_TMPDIR": temp, "RAY_AUTH_MODE": "token",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    head_env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen([os.path.join(bin_dir, "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={port}", "--include-dashboard=false"], env=head_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300  # on a loaded machine the head takes a while: wait until its GCS answers
    while not _answers("127.0.0.1", port) and time.time() < deadline and head.poll() is None:
        time.sleep(1)
    if head.poll() is not None or not _answers("127.0.0.1", port):
        raise SystemExit(f"the Ray head did not come up on 127.0.0.1:{port} (its logs: {temp})")
    time.sleep(5)
    ray_env = {**head_env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    try:
        builds = {}
        for rows in (args.rows, 2 * args.rows):
            build = out / f"build-{rows}"
            builds[rows] = build
            if args.skip_build and (build / "manifest.json").is_file():
                continue
            write_source(out / f"questions-{rows}.jsonl", rows)
            seconds, peak, _ = run([python, "-m", "raypipe.build", "--backend", "none", "--train-dataset",
                                    str(out / f"questions-{rows}.jsonl"), "--layers", "all", f"--positions={POSITIONS}",
                                    "--test-fraction", "0.2", "--shard-size", "256", "--overwrite",
                                    *[a for c in ("answer_value", "correct", "semantic_entropy_high",
                                                  "mean_token_entropy", "mean_logprob") for a in ("--label-column", c)],
                                    "--out-dir", str(build)], ray_env)
            print(f"build of {rows} rows: {seconds:.0f} s, {features_gb(build):.2f} GB of shards", flush=True)
        print(f"{'rows':>6} {'features':>9} {'command':>9} {'seconds':>8} {'driver MB':>10} {'task MB':>8} "
              f"{'block MB':>9} {'task - block':>12}")
        for rows, build in builds.items():
            for command in ("sweep", "evaluate"):
                target = out / f"{command}-{rows}"
                extra = ["--label", "answer_value"] if command == "sweep" else ["--positions", POSITIONS]
                seconds, driver, _ = run([python, "-m", "raypipe.cli", command, "--data-dir", str(build),
                                          "--out-dir", str(target), "--resamples", "200", *extra], ray_env)
                result = json.loads((target / ("performance.json" if command == "sweep" else
                                               "probe_eval.json")).read_text())
                task = max(result["blocks"], key=lambda b: b["peak_rss_mb"])
                print(f"{rows:>6} {features_gb(build):>8.2f}G {command:>9} {seconds:>8.0f} {driver:>10.0f} "
                      f"{task['peak_rss_mb']:>8.0f} {task['block_mb']:>9.0f} "
                      f"{task['peak_rss_mb'] - task['block_mb']:>12.0f}", flush=True)
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", temp], check=False)
        shutil.rmtree(temp, ignore_errors=True)


def _answers(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()

"""The driver at internet scale: how long until the first shard is submitted, and the driver's peak memory.

    .venv/bin/python bench/driver.py [--prompts 1000000] [--shard-size 64]

Writes a synthetic source of N chat prompts (the built-in arithmetic problems, repeated with their index; not
timed), starts `python -m raypipe.build` on it against a fresh local Ray, and reads the driver's own clock and
/proc: seconds from the process's start to "streaming" (every shard planned, the first submitted to Ray Data) and
to the first shard written, and the driver's peak resident memory (VmHWM) by then; then stops the build.
Targets for 1M prompts: first shard submitted within 60 s, driver peak under 4 GB.
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


def write_source(path: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raypipe.sources.builtin import arithmetic_problems

    base = arithmetic_problems(1000, seed=0)
    prompts = [f"{base[i % 1000]['prompt']} (problem {i})" for i in range(n)]
    answers = [base[i % 1000]["answer"] for i in range(n)]
    pq.write_table(pa.table({"prompt": prompts, "answer": answers}), path)


def peak_rss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except FileNotFoundError:
        pass
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rp-", dir="/tmp"))
    source, out = work / "source.parquet", work / "out"
    write_source(source, args.prompts)
    env = {**os.environ, "RAY_TMPDIR": str(work), "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}
    started = time.time()
    driver = subprocess.Popen([sys.executable, "-m", "raypipe.build", "--train-dataset", str(source),
                               "--shard-size", str(args.shard_size), "--max-tokens", "16", "--out-dir", str(out)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    streaming = written = None
    peak = 0.0
    try:
        os.set_blocking(driver.stdout.fileno(), False)
        buffer = ""
        while time.time() - started < args.timeout and driver.poll() is None and written is None:
            peak = max(peak, peak_rss_gb(driver.pid))
            buffer += driver.stdout.read() or ""
            if streaming is None and "raypipe: streaming" in buffer:
                streaming = time.time() - started
            if streaming is not None and (out / "manifest.json").exists():
                manifest = json.loads((out / "manifest.json").read_text())
                if any(s["status"] == "complete" for d in manifest["splits"].values() for s in d["shards"].values()):
                    written = time.time() - started
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", str(work)], check=False)
    planned = next((line for line in buffer.splitlines() if "shards planned" in line), "?")
    print(f"prompts={args.prompts} shard_size={args.shard_size}: {planned.removeprefix('raypipe: ')}")
    print(f"first shard submitted (streaming) after {streaming:.1f} s" if streaming else "never started streaming",
          f"(target <= 60 s); first shard written after {written:.1f} s" if written else "")
    print(f"driver peak resident memory {peak:.2f} GB (target < 4 GB)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

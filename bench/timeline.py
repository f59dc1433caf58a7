"""A build's timeline on a simulated GPU cluster: when each shard's rollout and prefill ran, and when shards landed.

    .venv/bin/python bench/timeline.py --gpus 1 --prompts 96 --shard-size 8 [--repo PATH] [-- extra build args]

Starts a Ray head with logical GPUs (`ray start --head --num-gpus N`: actors asking for GPUs are placed exactly as on
a GPU cluster, while the work runs on the CPU), runs `python -m raypipe.build` against it from --repo (default: this
checkout; point it at another checkout to measure the code before a change), then prints each shard's rollout and
prefill spans from the manifest's stats, relative to the build's start, and when the first and last shards landed.
Reads both the per-stage stats (`stats.rollout.start/end`) and the older flat ones (`rollout_end`, `rollout_s`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spans(shard: dict) -> dict[str, tuple[float, float]]:
    """{stage: (start, end)} of a manifest shard entry, in either stats layout."""
    stats = shard["stats"]
    if "rollout" in stats and isinstance(stats["rollout"], dict):
        return {stage: (stats[stage]["start"], stats[stage]["end"]) for stage in ("rollout", "prefill", "write")
                if stage in stats}
    return {"rollout": (stats["rollout_end"] - stats["rollout_s"], stats["rollout_end"]),
            "prefill": (stats["written_at"] - stats.get("prefill_s", 0.0), stats["written_at"]),  # ends at the write
            "write": (stats["written_at"], stats["written_at"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--repo", default=str(REPO), help="checkout whose raypipe runs the build")
    parser.add_argument("extra", nargs="*", help="more build arguments (after --)")
    args = parser.parse_args()

    bin_dir = str(Path(sys.executable).parent)
    temp_dir = tempfile.mkdtemp(prefix="rp-", dir="/tmp")
    out = Path(temp_dir) / "out"
    # Loopback only: Ray takes 127.0.0.1 as every node's address.
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "RAY_TMPDIR": temp_dir,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}  # `ray start` heads want the token
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    head = subprocess.Popen([os.path.join(bin_dir, "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={port}", f"--num-gpus={args.gpus}", f"--num-cpus={args.cpus}",
                             "--include-dashboard=false"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        record = Path(temp_dir) / "ray" / "ray_current_cluster"  # written once the head is up
        deadline = time.time() + 180
        while not record.exists() and time.time() < deadline and head.poll() is None:
            time.sleep(0.5)
        time.sleep(3)
        started = time.time()
        build = subprocess.run([sys.executable, "-m", "raypipe.build", "--preset", "smollm2_135m", "--builtin-size",
                                str(args.prompts), "--shard-size", str(args.shard_size), "--out-dir", str(out),
                                *args.extra], cwd=args.repo, env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
                               capture_output=True, text=True)
        ended = time.time()
        if build.returncode != 0:
            sys.exit(f"build failed ({build.returncode}):\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
        manifest = json.loads((out / "manifest.json").read_text())
        shards = sorted(((split, name, shard) for split, data in manifest["splits"].items()
                         for name, shard in data["shards"].items()), key=lambda s: spans(s[2])["write"][1])
        print(f"{args.gpus} logical GPU(s), {args.prompts} prompts, shards of {args.shard_size}, repo {args.repo}")
        print(f"{'shard':24s} {'rollout':>17s} {'prefill':>17s} {'written':>8s}")
        for split, name, shard in shards:
            s = {k: (a - started, b - started) for k, (a, b) in spans(shard).items()}
            print(f"{split + '/' + name:24s} {s['rollout'][0]:7.1f}..{s['rollout'][1]:7.1f} "
                  f"{s['prefill'][0]:7.1f}..{s['prefill'][1]:7.1f} {s['write'][1]:8.1f}")
        writes = [spans(shard)["write"][1] - started for _, _, shard in shards]
        rollout_ends = [spans(shard)["rollout"][1] - started for _, _, shard in shards]
        total = ended - started
        print(f"run {total:.0f} s; first shard written at {writes[0]:.0f} s ({writes[0] / total:.0%} of the run), "
              f"last rollout ended at {max(rollout_ends):.0f} s; shards written before the last rollout ended: "
              f"{sum(w < max(rollout_ends) for w in writes)}/{len(writes)}")
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""`raypipe score` reads one (layer, position) slice, not the build: its time and peak memory against reading the
build's features whole, at N and 2N rows.

    .venv/bin/python bench/score.py [--rows 4000] [--layers 30] [--positions 8] [--hidden 576] [--out runs/bench-score]

Writes synthetic builds (the real shard writer; SmolLM2-135M's hidden size, every layer x 8 positions: 553 KB of
features a row), sweeps one small build in-process to get a saved probe of the same shape, then, each in its own
process (peak RSS measured by the kernel when it ends): `raypipe score --executor local` on the big builds, and the
baseline, `raypipe.output.load_split` of every split (what scoring without a slice reader would hold). Prints the
seconds and peak MB of each and their ratios; the score's peak should stay flat from N to 2N rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measured(code: str) -> tuple[float, float]:
    """(seconds, peak RSS MB) of `python -c code` in a process of its own."""
    wrapper = ("import resource, subprocess, sys\n"
               "r = subprocess.run([sys.executable, '-c', sys.argv[1]], capture_output=True, text=True)\n"
               "assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, code], capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return time.perf_counter() - started, int(done.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--positions", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--out", default="runs/bench-score")
    args = parser.parse_args()

    from raypipe.probes.config import SweepConfig
    from raypipe.probes.sweep import run_sweep
    from tests.synthetic import write_planted_build

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    shape = {"layers": tuple(range(args.layers)), "positions": tuple(range(-args.positions, 0)),
             "hidden": args.hidden, "planted": (args.layers // 2, args.positions - 1), "num_layers": args.layers}
    write_planted_build(out / "small", rows=(400, 100), **shape)
    run_sweep(SweepConfig(data_dir=str(out / "small"), out_dir=str(out / "sweep"), executor="local",
                          layers=str(args.layers // 2), positions="-1", resamples=100))
    probe = out / "sweep" / "probe.safetensors"
    print(f"probe: layer {json.loads((out / 'sweep' / 'probe.json').read_text())['layer']}, position -1")
    print("| rows | features | score s | score peak MB | read-all s | read-all peak MB | time ratio | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for rows in (args.rows, 2 * args.rows):
        build = out / f"build-{rows}"
        write_planted_build(build, rows=(rows * 4 // 5, rows // 5), shard_size=500, seed=rows, **shape)
        size_gb = sum(f.stat().st_size for f in build.rglob("*.safetensors")) / 2**30
        score = measured(f"from raypipe.probes.config import ScoreConfig; from raypipe.probes.score import run_score; "
                         f"run_score(ScoreConfig(probe={str(probe)!r}, data_dir={str(build)!r}, "
                         f"out_dir={str(out / f'scored-{rows}')!r}, executor='local', resamples=200))")
        read_all = measured(f"from raypipe.output import load_split; "
                            f"[load_split({str(build)!r}, s)['features'].sum() for s in ('train', 'test')]")
        print(f"| {rows} | {size_gb:.2f} GB | {score[0]:.1f} | {score[1]:.0f} | {read_all[0]:.1f} | "
              f"{read_all[1]:.0f} | {score[0] / read_all[0]:.2f} | {score[1] / read_all[1]:.2f} |")
        summary = json.loads((out / f"scored-{rows}" / "score.json").read_text())
        print(f"  scored: test {summary['metric']} {summary['splits']['test']['significance']['value']:.3f}, "
              f"ECE {summary['splits']['test']['calibration']['value']:.3f}")


if __name__ == "__main__":
    main()

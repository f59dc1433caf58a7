"""Correctness-label benchmark: the answer labeler against the one before issue 11, on the hand-checked fixture.

    .venv/bin/python bench/labels.py [--repeats 5]

Both labelers label every row of tests/fixtures/answers.jsonl (276 real outputs with hand judgements):
  before : `is_correct(text, reference)` of raypipe/labels/answers.py at BASELINE_COMMIT (last boxed, else the last
           number anywhere), loaded from git
  after  : today's `is_correct(text, reference, finish_reason)` (match="math")
Prints precision and recall of `correct` against the judgements (no_answer and incorrect are negatives), then
microseconds per sample of each: the best of --repeats passes over all texts, math-verify's parse cache cleared
before each pass so that no pass is all cache hits, and the first (cold) pass of the new labeler separately, since it
imports and warms up math-verify and sympy. Same run, same machine: compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "answers.jsonl"
BASELINE_COMMIT = "a5e8d9d"  # the last commit before issue 11


def baseline_labeler():
    """The old is_correct, from git: the module as it was at BASELINE_COMMIT."""
    source = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:raypipe/labels/answers.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("answers_before")
    exec(compile(source, "answers_before.py", "exec"), module.__dict__)
    return lambda row: module.is_correct(row["text"], row["reference"])


def current_labeler():
    from raypipe.labels import answers

    return lambda row: answers.is_correct(row["text"], row["reference"], row["finish_reason"])


def precision_recall(label, rows: list[dict]) -> tuple[float, float, int, int, int]:
    predicted = [label(row) for row in rows]
    actual = [row["judgement"] == "correct" for row in rows]
    tp = sum(p and a for p, a in zip(predicted, actual))
    fp = sum(p and not a for p, a in zip(predicted, actual))
    fn = sum(a and not p for p, a in zip(predicted, actual))
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1), tp, fp, fn


def seconds_per_pass(label, rows: list[dict]) -> float:
    from raypipe.labels import answers

    answers._parse.cache_clear()
    start = time.perf_counter()
    for row in rows:
        label(row)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    before, after = baseline_labeler(), current_labeler()

    cold = seconds_per_pass(after, rows)  # first: imports math-verify and sympy, warms up the LaTeX parser
    timings = {name: min(seconds_per_pass(label, rows) for _ in range(repeats))
               for name, label in (("before", before), ("after", after))}
    print(f"fixture: {len(rows)} rows, {sum(row['judgement'] == 'correct' for row in rows)} judged correct")
    for name, label in (("before", before), ("after", after)):
        precision, recall, tp, fp, fn = precision_recall(label, rows)
        print(f"{name:>6}: precision {precision:.3f}  recall {recall:.3f}  (tp {tp}, fp {fp}, fn {fn})  "
              f"{timings[name] / len(rows) * 1e6:8.1f} us/sample")
    for source in sorted({row["id"].rsplit("-", 1)[0] for row in rows}):
        subset = [row for row in rows if row["id"].rsplit("-", 1)[0] == source]
        per_sample = min(seconds_per_pass(after, subset) for _ in range(repeats)) / len(subset) * 1e6
        print(f" after, {source} rows only ({len(subset)}): {per_sample:.1f} us/sample")
    print(f" after, first pass (cold): {cold / len(rows) * 1e6:.1f} us/sample")
    print(f" ratio after/before: {timings['after'] / timings['before']:.1f}x")


if __name__ == "__main__":
    main()

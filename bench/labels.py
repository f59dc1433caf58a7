"""Correctness-label benchmark: the answer labeler against the one before issue 11, on the hand-checked fixture;
then, per public dataset format, the labels a build gives against the one before issue 24.

    .venv/bin/python bench/labels.py [--repeats 5]

Public formats (tests/fixtures/public_formats: real rows of GSM8K, MATH, MATH-500, TriviaQA, Natural Questions,
SQuAD, MMLU and ARC in their published schemas, with judged outputs of several styles): each row goes through the
build's own source reading (`open_sources`, `read_rows`: dotted answer fields, options, templates) with the flags
FORMATS gives (those of configs/ and docs/datasets.md), then `matching.judge` with the resolved --answer-match and a
thinking model's `</think>`. Before: issue 11's `is_correct(text, str(value))` on the same outputs. Precision and
recall of `correct` per format; the bar is 0.98 and 0.95 (tests/test_public_formats.py holds it). Then the same on
the held-out set (written after the matcher) and on the embedded model's own greedy outputs for the same rows.

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
PUBLIC = REPO / "tests" / "fixtures" / "public_formats"
HELD_OUT = REPO / "tests" / "fixtures" / "public_formats_heldout"  # written after the matcher, never tuned on
BASELINE_COMMIT = "a5e8d9d"  # the last commit before issue 11
# The source flags of each public format, as configs/ and docs/datasets.md give them.
FORMATS = {
    "gsm8k": {"prompt_field": "question"},  # 'answer' holds the solution; its value after '####' is judged
    "math": {"prompt_field": "problem", "answer_field": "solution"},  # the solution's last \\boxed{}
    "math500": {"prompt_field": "problem", "answer_field": "answer"},
    "triviaqa": {"prompt_field": "question", "answer_field": "answer.aliases"},
    "nq_open": {"prompt_field": "question", "answer_field": "answer"},
    "squad": {"prompt_template": "{context}\n\nQuestion: {question}", "answer_field": "answers.text"},
    "mmlu": {"prompt_template": "{question}\n{choices}", "answer_field": "answer", "options_field": "choices"},
    "arc": {"prompt_template": "{question}\n{choices.text}", "answer_field": "answerKey",
            "options_field": "choices.text"},
}
ANSWER_AFTER = "</think>"  # what the presets that think set; no effect on a sample without it


def baseline_labeler():
    """The old is_correct, from git: the module as it was at BASELINE_COMMIT."""
    source = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:raypipe/labels/answers.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("answers_before")
    exec(compile(source, "answers_before.py", "exec"), module.__dict__)
    return lambda row: module.is_correct(row["text"], row["reference"])


def current_labeler():
    from raypipe.labels import matching

    return lambda row: matching.is_correct(row["text"], row["reference"], row["finish_reason"])


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


EMBEDDED = PUBLIC / "smollm2_greedy.jsonl"  # the embedded model's own greedy outputs on the same rows, judged


def public_rows(name: str, fixtures: Path = PUBLIC) -> list[dict]:
    if fixtures == EMBEDDED:
        return [item for item in map(json.loads, EMBEDDED.read_text().splitlines()) if item["format"] == name]
    return [json.loads(line) for line in (fixtures / f"{name}.jsonl").read_text().splitlines() if line.strip()]


def score_format(name: str, labeler: str = "after", fixtures: Path = PUBLIC) -> dict:
    """Precision and recall of `correct` on one public format's judged outputs, read as a build reads the rows."""
    import tempfile

    from raypipe.config import BuildConfig, SourceConfig, get_preset
    from raypipe.data import open_sources, read_rows
    from raypipe.labels.matching import judge
    from raypipe.labels.references import Reference
    from raypipe.plan import answer_match

    fixture = public_rows(name, fixtures)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / f"{name}.jsonl"
        import datasets

        datasets.disable_progress_bars()
        data.write_text("".join(json.dumps(item["row"]) + "\n" for item in fixture))
        config = BuildConfig(out_dir=folder, model=get_preset("smollm2_135m"),
                             source=SourceConfig(train_dataset=str(data), test_fraction=0.5, **FORMATS[name]))
        sources, _ = open_sources(config.source)
        rows, skipped = read_rows(sources["train"], list(range(len(fixture))), list(range(len(fixture))))
        match = answer_match(config, sources)
    assert len(rows) == len(fixture), (name, skipped)
    if labeler == "before":
        old = baseline_labeler()
        predict = lambda row, out: old({"text": out["text"], "reference": row["answer"]})  # noqa: E731
    else:
        predict = lambda row, out: judge(out["text"], out["finish_reason"],  # noqa: E731
                                         Reference.from_json(row["reference"]), match, answer_after=ANSWER_AFTER)[0]
    predicted, actual = [], []
    for row, item in zip(rows, fixture):
        for output in item["outputs"]:
            predicted.append(bool(predict(row, output)))
            actual.append(bool(output["correct"]))
    tp = sum(p and a for p, a in zip(predicted, actual))
    fp = sum(p and not a for p, a in zip(predicted, actual))
    fn = sum(a and not p for p, a in zip(predicted, actual))
    return {"format": name, "match": "choice" if "options_field" in FORMATS[name] else match, "rows": len(rows),
            "outputs": len(actual), "correct": sum(actual), "predicted": tp + fp,
            "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1), "fp": fp, "fn": fn}


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

    for fixtures in (PUBLIC, HELD_OUT, EMBEDDED):
        if not fixtures.exists():
            continue
        print(f"\npublic formats, {fixtures.relative_to(REPO)} (correct): before issue 24 -> after")
        for name in [name for name in FORMATS if fixtures == EMBEDDED or (fixtures / f"{name}.jsonl").is_file()]:
            before, after = score_format(name, "before", fixtures), score_format(name, "after", fixtures)
            print(f"{name:>9} ({after['outputs']:3d} outputs, {after['correct']:3d} right, match {after['match']:>6}): "
                  f"precision {_rate(before, 'precision')} -> {_rate(after, 'precision')}  "
                  f"recall {before['recall']:.3f} -> {after['recall']:.3f}  (after: fp {after['fp']}, fn {after['fn']})")


def _rate(result: dict, name: str) -> str:
    """A precision, or '  -  ' when the labeller called nothing correct (no precision to speak of)."""
    return f"{result[name]:.3f}" if result["predicted"] else "  -  "


if __name__ == "__main__":
    main()

"""Which rows changed their `correct` label with the final-answer rules and math-verify, and why.

    .venv/bin/python bench/relabel.py --champ-source runs/champ96.jsonl [--problems 96]   # write a CHAMP source
    .venv/bin/python -m raypipe.build --train-dataset runs/champ96.jsonl --answer-field answer --max-tokens 192 \\
        --out-dir runs/champ96
    .venv/bin/python bench/relabel.py runs/champ96 runs/demo

For each build, the stored `correct` (today's labeler) is compared with the labeler before it (last \\boxed{}, else
the last number anywhere; recovered from git commit a5e8d9d) run on the same stored first samples, and every change
is given a reason: cut off at the token limit, no final answer (a number mid-text), an explicit answer the old rule
missed, or an equivalence only the verifier sees.
"""

from __future__ import annotations

import argparse
import subprocess
import types
from collections import Counter
from pathlib import Path

OLD_COMMIT = "a5e8d9d"
CHAMP_INSTRUCTION = "Solve the following problem. Make sure to show your work before giving the final answer.\n\n"


def old_labeler():
    """The previous answers module, loaded from git."""
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:raypipe/labels/answers.py"], capture_output=True,
                            text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    module = types.ModuleType("old_answers")
    exec(compile(source, "old_answers.py", "exec"), module.__dict__)
    return module


def write_champ_source(path: Path, problems: int) -> None:
    import json
    from importlib import resources

    with resources.files("champ_dataset").joinpath("dataset_files/v0.json").open() as f:
        champ = json.load(f)["problems"]
    rows = [{"prompt": CHAMP_INSTRUCTION + p["_text"], "answer": p["_answer"], "id": i}
            for i, p in enumerate(list(champ.values())[:problems])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} CHAMP problems to {path}")


def reason(old_correct: bool, text: str, finish: str, reference: str) -> str:
    from raypipe.labels.answers import final_answer

    answer = final_answer(text, finish)
    if old_correct:
        if finish == "length" and answer is None:
            return "was correct: cut off at the token limit, no final answer before the cut"
        if answer is None:
            return "was correct: no final answer, a number mid-text matched the reference"
        return f"was correct: the final answer {answer!r} is not the reference {reference!r}"
    if answer is not None:
        return f"now correct: the final answer {answer!r} equals {reference!r} (the old rule read another value)"
    return "now correct: other"


def compare(build: str, show: int = 0) -> None:
    from raypipe.output import load_rollouts, load_split

    old = old_labeler()
    changed, counts, total = Counter(), Counter(), 0
    for split in ("train", "test"):
        tensors, rollouts = load_split(build, split), load_rollouts(build, split).to_pylist()
        for stored, row in zip(tensors["label.correct"].tolist(), rollouts):
            if stored != stored or row.get("answer") is None:
                continue
            total += 1
            text, finish = row["text"][0], row["finish_reason"][0]
            before = old.is_correct(text, row["answer"])
            counts["new correct"] += int(stored)
            counts["old correct"] += int(before)
            if bool(stored) != before:
                why = reason(before, text, finish, row["answer"])
                changed[why] += 1
                if changed[why] <= show:  # let the reader judge: the reference and how the sample ends
                    tail = " ".join(text[-160:].split())
                    print(f"  [{split} row {row['row_id']}] {why}\n    reference {row['answer']!r}; ends ...{tail!r}")
    print(f"{build}: {total} rows with a reference; correct before {counts['old correct']}, now "
          f"{counts['new correct']}; {sum(changed.values())} changed")
    for why, n in changed.most_common():
        print(f"  {n:3d}  {why}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="*")
    parser.add_argument("--champ-source", help="write a JSONL source of CHAMP problems here and stop")
    parser.add_argument("--problems", type=int, default=96)
    parser.add_argument("--show", type=int, default=0, help="print this many changed rows of each reason")
    args = parser.parse_args()
    if args.champ_source:
        write_champ_source(Path(args.champ_source), args.problems)
        return
    for build in args.builds:
        compare(build, args.show)


if __name__ == "__main__":
    main()

"""SEP's table on data where the embedded model is sometimes right: graded plain arithmetic questions.

    .venv/bin/python bench/sep.py --source runs/easy.jsonl --ood runs/easy-ood.jsonl [--questions 200]
    .venv/bin/raypipe build --config configs/sep.yaml          # K = 10 samples, -1 and answer:-2, every layer
    .venv/bin/raypipe evaluate --config configs/sep.yaml       # SEP's table on test and on the OOD split

The built-in word problems are too hard for SmolLM2-135M at temperature 0.7 (about 4% of samples right, none in a
128-row build's test split), so SEP's incorrectness target has one class there. These questions run from sums of small
numbers to two-digit sums and differences, which it mostly gets wrong (it even says 7 + 7 = 12): both classes
occur, and whether a probe sees difficulty in the hidden states can be measured. `--ood` writes the same arithmetic
worded as a short story (a shift of wording, not of difficulty): the out-of-distribution evaluation split of
configs/sep.yaml, scored by `raypipe evaluate` beside test.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# (operator, range of the first operand, range of the second), easiest first
LEVELS = [("+", (1, 5), (1, 4)), ("+", (1, 9), (1, 9)), ("*", (2, 5), (2, 5)), ("*", (2, 9), (2, 9)),
          ("+", (10, 99), (10, 99)), ("-", (20, 99), (2, 9))]


STORIES = {"+": "Ana has {a} shells and finds {b} more. How many shells does she have now?",
           "-": "Ana has {a} shells and gives {b} away. How many shells does she have left?",
           "*": "Ana fills {a} jars with {b} shells each. How many shells is that?"}


def questions(count: int, seed: int = 0, story: bool = False) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        op, (a_lo, a_hi), (b_lo, b_hi) = LEVELS[i % len(LEVELS)]
        a, b = rng.randint(a_lo, a_hi), rng.randint(b_lo, b_hi)
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        text = STORIES[op].format(a=a, b=b) if story else f"What is {a} {op} {b}?"
        rows.append({"id": i, "prompt": f"{text} Give the final answer as a number.", "answer": str(answer),
                     "level": i % len(LEVELS)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="write the JSONL source here")
    parser.add_argument("--ood", help="also write the same arithmetic worded as stories here (the OOD split)")
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--ood-questions", type=int, default=60)
    args = parser.parse_args()
    for where, count, story, seed in ((args.source, args.questions, False, 0), (args.ood, args.ood_questions, True, 1)):
        if where:
            path = Path(where)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row) + "\n" for row in questions(count, seed, story)))
            print(f"wrote {count} {'story ' if story else ''}questions ({len(LEVELS)} levels) to {path}")


if __name__ == "__main__":
    main()

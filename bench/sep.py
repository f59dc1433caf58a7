"""SEP's table on data where the embedded model is sometimes right: graded plain arithmetic questions.

    .venv/bin/python bench/sep.py --source runs/easy.jsonl [--questions 200]     # write the source
    .venv/bin/python -m raypipe.build --train-dataset runs/easy.jsonl --test-fraction 0.3 --num-samples 10 \\
        --answer-field answer --temperature 0.7 --top-p 0.9 --max-tokens 48 --positions -1,answer:-2 --layers all --out-dir runs/easy
    .venv/bin/raypipe evaluate --data-dir runs/easy --out-dir runs/easy-eval

The built-in word problems are too hard for SmolLM2-135M at temperature 0.7 (about 4% of samples right, none in a
128-row build's test split), so SEP's incorrectness target has one class there. These questions run from sums of small
numbers to two-digit sums and differences, which it mostly gets wrong (it even says 7 + 7 = 12): both classes
occur, and whether a probe sees difficulty in the hidden states can be measured.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# (operator, range of the first operand, range of the second), easiest first
LEVELS = [("+", (1, 5), (1, 4)), ("+", (1, 9), (1, 9)), ("*", (2, 5), (2, 5)), ("*", (2, 9), (2, 9)),
          ("+", (10, 99), (10, 99)), ("-", (20, 99), (2, 9))]


def questions(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        op, (a_lo, a_hi), (b_lo, b_hi) = LEVELS[i % len(LEVELS)]
        a, b = rng.randint(a_lo, a_hi), rng.randint(b_lo, b_hi)
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        rows.append({"id": i, "prompt": f"What is {a} {op} {b}? Give the final answer as a number.",
                     "answer": str(answer), "level": i % len(LEVELS)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="write the JSONL source here")
    parser.add_argument("--questions", type=int, default=200)
    args = parser.parse_args()
    path = Path(args.source)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in questions(args.questions)))
    print(f"wrote {args.questions} questions ({len(LEVELS)} levels) to {path}")


if __name__ == "__main__":
    main()

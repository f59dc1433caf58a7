"""The built-in prompt source, `builtin:NAME`: prompts generated from a seed, so a build needs no dataset at all
(`builtin:arithmetic` is a build's source when it names none)."""

from __future__ import annotations

import random

from raypipe.errors import UserError

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Ema", "Finn", "Gia", "Hugo", "Iris", "Jon", "Kai", "Lena", "Milo", "Nora"]
_THINGS = ["apples", "marbles", "stickers", "books", "coins", "shells", "pencils", "cards", "stamps", "cookies"]


def arithmetic_problems(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Seeded arithmetic word problems with their integer answers, any number of them."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, friend = rng.sample(_NAMES, 2)
        thing = rng.choice(_THINGS)
        a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 9)
        kind = rng.randrange(5)
        if kind == 0:
            q, ans = f"{name} has {a} {thing} and buys {b} more. How many {thing} does {name} have now?", a + b
        elif kind == 1:
            a = a + b
            q, ans = f"{name} had {a} {thing} and gave {b} to {friend}. How many {thing} are left?", a - b
        elif kind == 2:
            q, ans = f"{name} fills {c} boxes with {b} {thing} each. How many {thing} is that in total?", b * c
        elif kind == 3:
            total = b * c
            q, ans = f"{name} shares {total} {thing} equally among {c} friends. How many does each friend get?", b
        else:
            q = (f"{name} has {a} {thing}, {friend} has {b} more than {name}, and they put them together. "
                 f"How many {thing} do they have?")
            ans = a + (a + b)
        rows.append({"prompt": q, "answer": str(ans)})
    return rows


PREFIX = "builtin"  # builtin:NAME
GENERATORS = {"arithmetic": arithmetic_problems}  # builtin:NAME -> its generator (rows, seed)


class BuiltinSource:
    """`builtin:NAME`: `size` generated rows per split."""

    usage = ", ".join(f"{PREFIX}:{name}" for name in GENERATORS)

    def load(self, spec: str, config: str | None, split: str, size: int, seed: int):
        import datasets

        generate = GENERATORS.get(spec.removeprefix(f"{PREFIX}:"))
        if generate is None:
            raise UserError(f"unknown built-in prompt source {spec!r}; known: {self.usage}")
        return datasets.Dataset.from_list(generate(size, seed))

    def offered_splits(self, spec: str, seed: int) -> list[tuple[str, str]]:
        return []

    def split_seed(self, seed: int, offset: int) -> int:
        """Each split generates rows of its own: the same seed would give the test split the train split's rows."""
        return seed + offset

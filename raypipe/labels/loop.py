"""loop_probe's loop detector: a trajectory that repeats the same n tokens k times is stuck in a loop."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def has_ngram_loop(token_ids: Sequence[int], n: int = 30, k: int = 20) -> bool:
    """True when some n-gram of `token_ids` occurs at least `k` times (occurrences may overlap)."""
    if n < 1 or k < 1:
        raise ValueError(f"n and k must be at least 1, got n={n}, k={k}")
    if len(token_ids) < n:
        return False
    ids = tuple(token_ids)
    counts: Counter[tuple[int, ...]] = Counter()
    for start in range(len(ids) - n + 1):
        gram = ids[start:start + n]
        counts[gram] += 1
        if counts[gram] >= k:
            return True
    return False


def loop_labels(samples_per_row: Sequence[Sequence[Sequence[int]]], n: int, k: int) -> list[int]:
    """The `loop` label of each row: the detector on the row's first sample."""
    return [int(has_ngram_loop(samples[0], n, k)) for samples in samples_per_row]

"""Which train rows each Ray Train worker runs, step by step: every worker the same number of micro-batches.

An epoch is a permutation of the train rows seeded by (seed, epoch), so a resumed run sees the batches an
uninterrupted one would. It is cut into optimizer steps of workers x per_device_train_batch_size x
gradient_accumulation_steps rows; micro-batch j of rank r takes slice (j * workers + r) of its step. The last step
of an epoch is short when the rows do not divide: a rank whose slice is empty runs the step's first row with weight
0 (a forward and backward that add nothing), so every rank calls backward, and DDP's all-reduce, equally often.
(Dealing rows round-robin, as before, gave one of two workers a batch more at 17 rows and batch 8: it waited for a
gradient sync that never came.) Padding by a weightless row rather than dropping the remainder keeps every row in
every epoch; the recipe divides each step's summed answer-token loss by the step's answer tokens over all ranks, so
a step's gradient is the one a single worker computes on the whole step: two workers at batch 4 train like one at
batch 8 (without dropout; with it, each worker draws its own masks).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class MicroBatch:
    """Row indices for one forward/backward; weight 0 marks a filler that only keeps the ranks in step."""

    rows: tuple[int, ...]
    weight: int = 1


def epoch_order(n_rows: int, seed: int, epoch: int) -> list[int]:
    """The epoch's permutation of the train rows, the same on every rank and on a resumed run."""
    order = list(range(n_rows))
    random.Random(seed * 100003 + epoch).shuffle(order)
    return order


def step_rows(order: list[int], workers: int, batch_size: int, accumulate: int) -> list[list[int]]:
    """The rows of each optimizer step, all ranks together."""
    size = workers * batch_size * accumulate
    return [order[i:i + size] for i in range(0, len(order), size)]


def rank_plan(order: list[int], workers: int, rank: int, batch_size: int, accumulate: int) -> list[list[MicroBatch]]:
    """This rank's micro-batches, per optimizer step: `accumulate` of them in every step, on every rank."""
    plan = []
    for rows in step_rows(order, workers, batch_size, accumulate):
        micro = []
        for j in range(accumulate):
            start = (j * workers + rank) * batch_size
            mine = tuple(rows[start:start + batch_size])
            micro.append(MicroBatch(mine) if mine else MicroBatch((rows[0],), weight=0))
        plan.append(micro)
    return plan


def steps_per_epoch(n_rows: int, workers: int, batch_size: int, accumulate: int) -> int:
    return -(-n_rows // (workers * batch_size * accumulate))

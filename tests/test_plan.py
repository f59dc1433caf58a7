"""The shard plan: from row indices, not rows, yet the same shards as the planner that read every row first."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe.config import SourceConfig
from raypipe.data import open_sources, read_rows, split_ids
from raypipe.plan import plan_shards
from raypipe.sources.builtin import arithmetic_problems


def _old_planner(questions: list[str], test_fraction: float, seed: int, shard_size: int):
    """The planner before the driver stopped reading rows: split the ids, keep every row, cut each split in order."""
    train, test = split_ids(len(questions), test_fraction, seed)
    shards = []
    for split, ids in (("train", train), ("test", test)):
        for start in range(0, len(ids), shard_size):
            part = ids[start:start + shard_size]
            shards.append((split, start // shard_size, part, [questions[i] for i in part]))
    return shards


def _new_planner(config: SourceConfig, shard_size: int):
    sources, splits = open_sources(config)
    shards = []
    for plan in plan_shards(splits, shard_size):
        rows, skipped = read_rows(sources[plan.source], plan.indices, plan.row_ids)
        assert not skipped
        shards.append((plan.split, plan.index, [r["row_id"] for r in rows], [r["question"] for r in rows]))
    return shards


@pytest.mark.parametrize("size, shard_size", [(128, 64), (200, 7), (37, 5)])
def test_the_builtin_source_is_planned_into_the_same_shards(size, shard_size):
    config = SourceConfig(builtin_size=size, seed=3)
    questions = [row["prompt"] for row in arithmetic_problems(size, seed=3)]
    assert _new_planner(config, shard_size) == _old_planner(questions, 0.1, 3, shard_size)


def test_a_local_file_is_planned_into_the_same_shards(tmp_path):
    questions = [f"question number {i}?" for i in range(50)]
    pq.write_table(pa.table({"prompt": questions}), tmp_path / "q.parquet")
    config = SourceConfig(train_dataset=str(tmp_path / "q.parquet"), test_fraction=0.2, seed=7)
    assert _new_planner(config, 8) == _old_planner(questions, 0.2, 7, 8)


def test_a_shard_keeps_its_rows_when_a_row_of_it_is_skipped(tmp_path):
    """Membership comes from the row indices, so an empty prompt shortens its own shard and moves no other row."""
    questions = [f"q{i}" for i in range(10)]
    questions[3] = ""
    pq.write_table(pa.table({"prompt": questions}), tmp_path / "q.parquet")
    sources, splits = open_sources(SourceConfig(train_dataset=str(tmp_path / "q.parquet"),
                                                test_dataset=str(tmp_path / "q.parquet")))
    plans = [p for p in plan_shards(splits, 4) if p.split == "train"]
    assert [p.row_ids for p in plans] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    rows, skipped = read_rows(sources["train"], plans[0].indices, plans[0].row_ids)
    assert [r["row_id"] for r in rows] == [0, 1, 2] and skipped == {"empty_prompt": 1}

"""What a build will do, resolved on the driver before any Ray work: the model's shape, the feature layout, the
labels, the usable rows of each split and their fixed shards. The manifest is written from it."""

from __future__ import annotations

from dataclasses import dataclass

from raypipe.data import PromptRow
from raypipe.store import shard_name

SPLITS = ("train", "test")


@dataclass
class BuildInputs:
    """Everything the driver resolves before Ray starts: a user error surfaces here, before any work."""

    local_model_path: str | None
    num_layers: int
    hidden_size: int
    layers: list[int]
    positions: list[int | str]  # negative offsets and 'marker:TEXT' / 'answer:-N' entries, as the manifest records
    rows: dict[str, list[PromptRow]]
    skipped: dict[str, dict[str, int]]  # rows skipped per split, counted by reason
    labels: dict[str, dict]  # the labels this build has, with definitions (labels.catalog.plan)


@dataclass
class ShardPlan:
    split: str
    index: int
    rows: list[PromptRow]

    @property
    def name(self) -> str:
        return shard_name(self.index)


def plan_shards(rows: dict[str, list[PromptRow]], shard_size: int) -> list[ShardPlan]:
    """Cut each split, in row order, into shards of shard_size rows (the last may be shorter)."""
    return [
        ShardPlan(split, start // shard_size, split_rows[start:start + shard_size])
        for split in SPLITS
        for split_rows in [rows.get(split, [])]
        for start in range(0, len(split_rows), shard_size)
    ]

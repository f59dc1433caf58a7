"""What a build will do, resolved on the driver before any Ray work: the model's shape, the feature layout, the
labels, the sources and each split's rows, and their fixed shards. The manifest is written from it.

The driver holds no prompt text: a shard is a list of row indices into an Arrow-backed source, and the prepare stage
reads, templates and tokenizes them on Ray. Shards are cut from each split's rows in order, before any row is
skipped, so a shard's membership is a pure function of the source, the split seed and the shard size: a rerun or a
resume plans exactly the same shards. A row skipped later (empty prompt, too long, marker absent) leaves its shard
one row shorter, counted in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raypipe.data import Source, SplitRows
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
    labels: dict[str, dict]  # the labels this build has, with definitions (labels.catalog.plan)
    sources: dict[str, Source]
    splits: dict[str, SplitRows]
    absent_labels: dict[str, str] = field(default_factory=dict)  # label -> why this build does not have it


@dataclass
class ShardPlan:
    split: str
    index: int
    source: str  # key of the Source its rows come from
    indices: list[int]  # row indices in that source
    row_ids: list[int]

    @property
    def name(self) -> str:
        return shard_name(self.index)


def plan_shards(splits: dict[str, SplitRows], shard_size: int) -> list[ShardPlan]:
    """Cut each split, in row order, into shards of shard_size rows (the last may be shorter)."""
    return [
        ShardPlan(split, start // shard_size, rows.source, rows.indices[start:start + shard_size],
                  rows.row_ids[start:start + shard_size])
        for split in SPLITS if split in splits
        for rows in [splits[split]]
        for start in range(0, len(rows.indices), shard_size)
    ]

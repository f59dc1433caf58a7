"""The manifest as typed records: a build, its feature layout and model, its label definitions, its splits and shards.

`manifest.json` is these records' JSON. Reading keeps every key a record does not declare in its `extra` and writing
puts it back, so a manifest written by another release (older or newer) survives a resume unchanged; a field an
older release did not write reads as its default here, and a field left at None is not written unless the JSON always
had it (a pending shard has no `files`; the model's `local_path` is null when unknown).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

FORMAT = "raypipe.probe-dataset/1"
PENDING, COMPLETE, FAILED = "pending", "complete", "failed"


class Record:
    """JSON in and out for a dataclass record: nested records by `_records` (field -> record class, for a value that
    is one record) and `_record_maps` (field -> record class, for a name -> record mapping)."""

    _records: ClassVar[dict[str, type]] = {}
    _record_maps: ClassVar[dict[str, type]] = {}
    _nullable: ClassVar[frozenset[str]] = frozenset()  # fields written as null when None (the JSON always had them)

    @classmethod
    def from_json(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                continue
            if key in cls._records and value is not None:
                value = cls._records[key].from_json(value)
            elif key in cls._record_maps and value is not None:
                value = {name: cls._record_maps[key].from_json(item) for name, item in value.items()}
            values[key] = value
        return cls(**values, extra={k: v for k, v in data.items() if k not in names})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name not in self._nullable):
                continue
            if isinstance(value, Record):
                value = value.to_json()
            elif f.name in self._record_maps:
                value = {name: item.to_json() for name, item in value.items()}
            out[f.name] = value
        return {**out, **self.extra}


@dataclass
class ModelRecord(Record):
    model_id: str = ""
    num_layers: int = 0
    hidden_size: int | None = None
    local_path: str | None = None  # the weights' folder when the model came from the hub's cache or a path
    extra: dict[str, Any] = field(default_factory=dict)
    _nullable: ClassVar[frozenset[str]] = frozenset({"local_path"})


@dataclass
class FeatureLayout(Record):
    """The features tensor of every shard: [rows, layers, positions, hidden], these layers and positions."""

    layers: list[int] = field(default_factory=list)
    positions: list = field(default_factory=list)  # negative offsets, "eoi", "marker:TEXT", "answer:-1", ...
    hidden_size: int | None = None  # None in builds that recorded it on the model only
    dtype: str | None = None
    shape: list[str] | None = None
    layer_convention: str | None = None
    position_convention: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LabelDefinition(Record):
    """What a label means and how its values are distributed. A derived label (`derived_from`) is never stored in a
    shard: it is computed from the label it names with `params['threshold']` (labels/catalog.py)."""

    kind: str = "given"  # binary, continuous, baseline, given, categorical
    definition: str | None = None
    counts: dict[str, dict[str, int]] | None = None  # split -> value -> rows (whole-number labels only)
    classes: list[str] | None = None  # a categorical label's class names, by class id
    params: dict[str, Any] | None = None
    derived_from: str | None = None
    no_final_answer: dict[str, dict[str, int]] | None = None  # `correct`: split -> counts of unanswered rows
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_values(self) -> bool:
        """False for a derived label whose threshold is not chosen yet (the build is not whole)."""
        return not self.derived_from or (self.params or {}).get("threshold") is not None


@dataclass
class ShardRecord(Record):
    """One shard: planned, then complete (its files with their sha256) or failed (the reason)."""

    status: str = PENDING
    planned_rows: int | None = None
    row_id_range: list[int] | None = None
    split: str | None = None
    name: str | None = None
    rows: int | None = None
    files: dict[str, str] | None = None  # file name in the split's folder -> sha256
    label_counts: dict[str, dict[str, int]] | None = None
    skipped: dict[str, int] | None = None  # reason -> rows left out of this shard
    answer_counts: dict[str, int] | None = None
    stats: dict[str, Any] | None = None  # per stage: node, pid, seconds, tokens, attempts
    retried: dict[str, int] | None = None
    error: str | None = None
    attempts: int | None = None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    def file_ending(self, suffix: str) -> str:
        """The name of this shard's file that ends in `suffix` ('.safetensors', '.parquet')."""
        return next(name for name in self.files or {} if name.endswith(suffix))


@dataclass
class SplitRecord(Record):
    shards: dict[str, ShardRecord] = field(default_factory=dict)
    rows: int | None = None  # rows of its complete shards
    extra: dict[str, Any] = field(default_factory=dict)
    _record_maps: ClassVar[dict[str, type]] = {"shards": ShardRecord}

    def complete_shards(self) -> list[ShardRecord]:
        return [shard for _, shard in sorted(self.shards.items()) if shard.complete]


@dataclass
class BuildRecord(Record):
    """The whole manifest: how the build was configured, what its features and labels are, where its shards are."""

    format: str = FORMAT
    raypipe_version: str | None = None
    created_at: str | None = None
    config: dict[str, Any] | None = None  # the resolved BuildConfig (config.to_dict())
    model: ModelRecord = field(default_factory=ModelRecord)
    features: FeatureLayout = field(default_factory=FeatureLayout)
    labels: dict[str, LabelDefinition] = field(default_factory=dict)
    absent_labels: dict[str, str] | None = None  # label -> why this build does not have it
    skipped_rows: dict[str, dict[str, int]] | None = None  # split -> reason -> rows
    splits: dict[str, SplitRecord] = field(default_factory=dict)
    runs: list[dict[str, Any]] | None = None  # one entry per run of the build (resumes included): its placement
    finished_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _records: ClassVar[dict[str, type]] = {"model": ModelRecord, "features": FeatureLayout}
    _record_maps: ClassVar[dict[str, type]] = {"labels": LabelDefinition, "splits": SplitRecord}

    @property
    def hidden_size(self) -> int:
        return int(self.features.hidden_size or self.model.hidden_size)

    def complete_shards(self, split: str) -> list[ShardRecord]:
        return self.splits[split].complete_shards() if split in self.splits else []

    def setting(self, dotted: str, default: Any = None) -> Any:
        """A value of the configuration the build recorded, by its dotted name ('model.num_samples'); `default` when
        the build predates the field."""
        value: Any = self.config or {}
        for key in dotted.split("."):
            if not isinstance(value, dict) or key not in value:
                return default
            value = value[key]
        return value

    def shards(self):
        """(split, name, shard) of every planned shard."""
        for split, record in self.splits.items():
            for name, shard in sorted(record.shards.items()):
                yield split, name, shard

    def status_counts(self) -> dict[str, dict[str, int]]:
        """Split -> shard status -> shards (`raypipe status`)."""
        summary: dict[str, dict[str, int]] = {}
        for split, _, shard in self.shards():
            summary.setdefault(split, {}).setdefault(shard.status, 0)
            summary[split][shard.status] += 1
        return summary

    def written_rows(self) -> int:
        return sum(record.rows or 0 for record in self.splits.values())

    def tally(self) -> None:
        """Counts over complete shards: rows and skipped rows per split, and each stored label's values (a derived
        label is counted once the build is whole: labels.catalog.finish_derived)."""
        self.skipped_rows = {}
        for split, record in self.splits.items():
            complete = record.complete_shards()
            record.rows = sum(shard.rows or 0 for shard in complete)
            self.skipped_rows[split] = _summed(shard.skipped for shard in complete)
            if "correct" in self.labels:  # rows and samples with a reference but no final answer
                correct = self.labels["correct"]
                correct.no_final_answer = {**(correct.no_final_answer or {}),
                                           split: _summed(shard.answer_counts for shard in complete)}
        for name, label in self.labels.items():
            if not label.derived_from:
                label.counts = {split: _summed((shard.label_counts or {}).get(name) for shard in
                                               record.complete_shards()) for split, record in self.splits.items()}


def _summed(tallies) -> dict[str, int]:
    total: dict[str, int] = {}
    for tally in tallies:
        for key, n in (tally or {}).items():
            total[key] = total.get(key, 0) + n
    return dict(sorted(total.items()))

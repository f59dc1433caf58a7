"""The manifest on disk: read, written, checked, and moved through its shards' states as a build runs.

The manifest is the completion marker of every shard (datatrove's habit): a shard counts as done only once its record,
with the sha256 of each file, is in a manifest that was renamed into place after the files. Whether an existing
manifest may be resumed (its configuration against this run's) is the pipeline's policy (raypipe/resume.py); this
module only keeps the record true.
"""

from __future__ import annotations

import json
import time

from raypipe.errors import UserError
from raypipe.fs import Location
from raypipe.output.layout import MANIFEST, is_shard_file, is_temporary
from raypipe.output.records import COMPLETE, FAILED, FORMAT, PENDING, BuildRecord, ShardRecord, SplitRecord

KEPT = {"prompt_truncated"}  # counted in skipped_rows, yet the row is kept (its prompt's end)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_manifest_json(location: Location) -> dict:
    """The manifest as JSON, checked to be a raypipe build's (what users and other tools read)."""
    if not location.is_file(MANIFEST):
        raise UserError(f"{location.path()} has no {MANIFEST}: is it the output folder of a raypipe build?")
    try:
        data = json.loads(location.read_bytes(MANIFEST))
    except json.JSONDecodeError as exc:
        raise UserError(f"{location.path(MANIFEST)} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{location.path(MANIFEST)} has format {found!r}, expected {FORMAT!r}")
    return data


def read_manifest(location: Location) -> BuildRecord:
    return BuildRecord.from_json(read_manifest_json(location))


def write_manifest(location: Location, record: BuildRecord) -> None:
    location.write_json(MANIFEST, record.to_json(), indent=2)


def verify_file(location: Location, relative: str, expected: str) -> None:
    """Stream one file through sha256 (never held whole); UserError when it is missing or differs."""
    if not location.is_file(relative):
        raise UserError(f"shard file {location.path(relative)} is missing")
    actual = location.sha256(relative)
    if actual != expected:
        raise UserError(f"shard file {location.path(relative)} is corrupt: sha256 {actual[:12]}... does not match "
                        f"the manifest's {expected[:12]}...")


def verify_shard(location: Location, split: str, shard: ShardRecord) -> None:
    """Raise UserError unless every file of a shard exists and matches its recorded sha256."""
    for file, expected in (shard.files or {}).items():
        verify_file(location, f"{split}/{file}", expected)


class BuildManifest:
    """A build's manifest while the build runs: the record, and the location it is rewritten to after each change."""

    def __init__(self, location: Location, record: BuildRecord):
        self.location = location
        self.record = record

    @property
    def path(self) -> str:
        return self.location.path(MANIFEST)

    def write(self) -> None:
        write_manifest(self.location, self.record)

    def plan(self, plans) -> None:
        """Add the planned shards (plan.ShardPlan) not yet recorded, as pending; note each one's rows."""
        for plan in plans:
            split = self.record.splits.setdefault(plan.split, SplitRecord())
            shard = split.shards.setdefault(plan.name, ShardRecord())
            shard.planned_rows, shard.row_id_range = len(plan.indices), [plan.row_ids[0], plan.row_ids[-1]]

    def recheck_complete_shards(self) -> None:
        """On resume, a complete shard whose files are missing or fail their sha256 is built again."""
        for split, name, shard in self.record.shards():
            if not shard.complete:
                continue
            try:
                verify_shard(self.location, split, shard)
            except UserError as exc:
                print(f"raypipe: {exc}; rebuilding {split}/{name}", flush=True)
                self.record.splits[split].shards[name] = ShardRecord(status=PENDING, note=f"rebuilt after: {exc}")
        self.record.tally()

    def pending(self, plans) -> list:
        return [p for p in plans if not self.record.splits[p.split].shards[p.name].complete]

    def complete(self, written: ShardRecord) -> None:
        """Record a shard whose files are on disk, then rewrite the manifest (the shard's completion marker)."""
        shard = self.record.splits[written.split].shards[written.name]
        skipped = written.skipped or {}
        accounted = written.rows + sum(n for reason, n in skipped.items() if reason not in KEPT)
        if accounted != shard.planned_rows:
            raise RuntimeError(f"{written.split}/{written.name} has {written.rows} rows and skipped {skipped}, "
                               f"planned {shard.planned_rows}")
        # The written record replaces the planned one (an earlier failure's error goes); the plan and a rebuild's
        # note stay.
        self.record.splits[written.split].shards[written.name] = ShardRecord(**{
            **vars(written), "status": COMPLETE, "planned_rows": shard.planned_rows,
            "row_id_range": shard.row_id_range, "note": written.note or shard.note,
            "extra": {**shard.extra, **written.extra}})
        self.record.tally()
        self.write()

    def fail(self, failed: ShardRecord) -> None:
        """Record a shard whose work kept failing, with the reason; a rerun tries it again."""
        shard = self.record.splits[failed.split].shards[failed.name]
        shard.status, shard.error, shard.attempts = FAILED, failed.error, failed.attempts
        self.write()

    def failed(self) -> list[str]:
        return [f"{split}/{name}" for split, name, shard in self.record.shards() if shard.status == FAILED]

    def record_run(self, info: dict) -> None:
        """What a run of the build did (its placement, when it started): one entry per run, resumes included."""
        self.record.runs = [*(self.record.runs or []), {"started_at": now(), **info}]
        self.write()

    def finish(self) -> None:
        self.record.finished_at = now()
        self.write()
        self.remove_unlisted_files()

    def remove_unlisted_files(self) -> None:
        """Shard files that no complete shard names: superseded writes of a shard (a retried or re-executed
        task), or a failed shard's partial output. Never read; removed so that they take no space."""
        for split, record in self.record.splits.items():
            listed = {file for shard in record.complete_shards() for file in shard.files or {}}
            for name in self.location.list(split):
                if is_shard_file(name) and name not in listed:
                    self.location.delete_file(f"{split}/{name}")

    def remove_temporaries(self) -> None:
        """Temporary files of an interrupted run: never read (only manifest-listed files are), removed on resume."""
        for folder in ("", *self.record.splits):
            for name in self.location.list(folder):
                if is_temporary(name):
                    self.location.delete_file(f"{folder}/{name}" if folder else name)

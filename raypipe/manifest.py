"""The shard plan and the manifest: what a build will write, what it has written, and with which configuration.

The manifest is the completion marker of every shard (datatrove's habit): a shard counts as done only once its entry,
with the sha256 of each file, is in a manifest that was renamed into place after the files. A rerun with the same
configuration skips those shards; a rerun with another configuration is refused (or starts over with --overwrite), so
shards of two configurations never mix.
"""

from __future__ import annotations

import time
from typing import Any

from raypipe import __version__
from raypipe.config import BuildConfig
from raypipe.errors import UserError
from raypipe.fs import Location
from raypipe.plan import SPLITS, BuildInputs, ShardPlan
from raypipe.store import FORMAT, MANIFEST, read_manifest, verify_shard, write_manifest

KEPT = {"prompt_truncated"}  # counted in skipped_rows, yet the row is kept (its prompt's end)

# Fields that change how fast a build runs, never what it writes: a resume may change them.
RUNTIME_FIELDS = {
    "out_dir", "max_retries", "placement", "gpu_memory_gb", "model.name", "model.description", "model.dp",
    "model.vllm.tp", "model.vllm.max_num_seqs", "model.vllm.gpu_memory_utilization", "model.vllm.enforce_eager",
    "model.hf.batch_tokens", "model.hf.max_sequences", "model.prefill_actors", "model.prefill_batch_tokens",
    "model.shards_in_flight",
}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None) -> list[str]:
    """Dotted names of the output-relevant fields whose values differ between two resolved configs. `defaults`
    (dotted name -> declared default) stands in for a field the old config lacks: one recorded before the field
    existed (a build made by an earlier release) then still resumes."""
    a, b = {**(defaults or {}), **_flatten(old)}, _flatten(new)
    return sorted(k for k in set(a) | set(b) if k not in RUNTIME_FIELDS and a.get(k) != b.get(k))


class Manifest:
    def __init__(self, out_dir: str, data: dict[str, Any]):
        self.out_dir = out_dir
        self.data = data

    @property
    def path(self) -> str:
        return Location(self.out_dir).path(MANIFEST)

    @classmethod
    def open(cls, config: BuildConfig, prepared: BuildInputs, plans: list[ShardPlan], overwrite: bool) -> Manifest:
        """Start a manifest for this build, or take over the existing one when its configuration matches."""
        out = Location(config.out_dir)
        resolved = config.to_dict()
        if out.is_file(MANIFEST):
            old = read_manifest(config.out_dir)
            from raypipe.options import field_defaults

            differing = config_differences(old["config"], resolved, field_defaults("build"))
            if differing and not overwrite:
                raise UserError(
                    f"{config.out_dir} holds a build with another configuration (differs in: {', '.join(differing)}); "
                    "use another --out-dir, or --overwrite to replace it"
                )
            if not differing:
                manifest = cls(config.out_dir, old)
                manifest.data["config"] = resolved  # runtime fields may have changed
                manifest._recheck_complete_shards()
                manifest._plan(plans)
                _remove_temporaries(out, manifest.data["splits"])
                manifest.write()
                return manifest
            _remove_outputs(out, list(old.get("splits", {})))
        elif out.list() and not overwrite:
            raise UserError(f"{config.out_dir} is not empty and has no {MANIFEST}; choose an empty or new --out-dir")
        model = config.model
        manifest = cls(config.out_dir, {
            "format": FORMAT,
            "raypipe_version": __version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": resolved,
            "model": {"model_id": model.model_id, "local_path": prepared.local_model_path,
                      "num_layers": prepared.num_layers, "hidden_size": prepared.hidden_size},
            "features": {
                "shape": ["rows", "layers", "positions", "hidden"],
                "layers": prepared.layers,
                "layer_convention": "index into HF hidden_states: 0 = embeddings, i = output of decoder layer i "
                                    "(the last one after the final norm)",
                "positions": prepared.positions,
                "position_convention": "negative, counted from the prompt's end: -1 = last prompt token",
                "hidden_size": prepared.hidden_size,
                "dtype": model.dtype if model.dtype != "auto" else "auto",
            },
            "labels": prepared.labels,
            "absent_labels": prepared.absent_labels,
            "skipped_rows": {},
            "splits": {},
        })
        manifest._plan(plans)
        manifest.write()
        return manifest

    def _plan(self, plans: list[ShardPlan]) -> None:
        splits = self.data.setdefault("splits", {})
        for plan in plans:
            shards = splits.setdefault(plan.split, {"shards": {}})["shards"]
            entry = shards.setdefault(plan.name, {"status": "pending"})
            entry.update({"planned_rows": len(plan.indices), "row_id_range": [plan.row_ids[0], plan.row_ids[-1]]})

    def _recheck_complete_shards(self) -> None:
        """On resume, a complete shard whose files are missing or fail their sha256 is built again."""
        for split, split_data in self.data["splits"].items():
            for name, shard in split_data["shards"].items():
                if shard["status"] != "complete":
                    continue
                try:
                    verify_shard(self.out_dir, shard)
                except UserError as exc:
                    print(f"raypipe: {exc}; rebuilding {split}/{name}", flush=True)
                    shard.clear()
                    shard.update(status="pending", note=f"rebuilt after: {exc}")
        self._tally()

    def pending(self, plans: list[ShardPlan]) -> list[ShardPlan]:
        shards = self.data["splits"]
        return [p for p in plans if shards[p.split]["shards"][p.name]["status"] != "complete"]

    def complete(self, entry: dict[str, Any]) -> None:
        """Record a shard whose files are on disk, then rewrite the manifest (the shard's completion marker)."""
        shard = self.data["splits"][entry["split"]]["shards"][entry["name"]]
        accounted = entry["rows"] + sum(n for reason, n in entry.get("skipped", {}).items() if reason not in KEPT)
        if accounted != shard["planned_rows"]:
            raise RuntimeError(f"{entry['split']}/{entry['name']} has {entry['rows']} rows and skipped "
                               f"{entry.get('skipped', {})}, planned {shard['planned_rows']}")
        shard.update(entry, status="complete")
        self._tally()
        self.write()

    def fail(self, entry: dict[str, Any]) -> None:
        """Record a shard whose work kept failing, with the reason; a rerun tries it again."""
        shard = self.data["splits"][entry["split"]]["shards"][entry["name"]]
        shard.update(status="failed", error=entry["error"], attempts=entry["attempts"])
        self.write()

    def failed(self) -> list[str]:
        return [f"{split}/{name}" for split, data in self.data["splits"].items()
                for name, shard in sorted(data["shards"].items()) if shard["status"] == "failed"]

    def _tally(self) -> None:
        for name, label in self.data["labels"].items():
            if label.get("derived_from"):  # counted once the build is whole (labels.catalog.finish_derived)
                continue
            label["counts"] = {}
            for split, split_data in self.data["splits"].items():
                counts: dict[str, int] = {}
                for shard in split_data["shards"].values():
                    for value, n in shard.get("label_counts", {}).get(name, {}).items():
                        counts[value] = counts.get(value, 0) + n
                label["counts"][split] = dict(sorted(counts.items()))
        self.data["skipped_rows"] = {}
        for split, split_data in self.data["splits"].items():
            complete = [s for s in split_data["shards"].values() if s["status"] == "complete"]
            split_data["rows"] = sum(s.get("rows", 0) for s in complete)
            skipped: dict[str, int] = {}
            for shard in complete:
                for reason, n in shard.get("skipped", {}).items():
                    skipped[reason] = skipped.get(reason, 0) + n
            self.data["skipped_rows"][split] = dict(sorted(skipped.items()))
            if "correct" in self.data["labels"]:  # rows and samples with a reference but no final answer
                answer_counts: dict[str, int] = {}
                for shard in complete:
                    for key, n in shard.get("answer_counts", {}).items():
                        answer_counts[key] = answer_counts.get(key, 0) + n
                self.data["labels"]["correct"].setdefault("no_final_answer", {})[split] = answer_counts

    def record_run(self, info: dict[str, Any]) -> None:
        """What a run of the build did (its placement, when it started): one entry per run, resumes included."""
        self.data.setdefault("runs", []).append({"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                 **info})
        self.write()

    def finish(self) -> None:
        self.data["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.write()
        self.remove_unlisted_files()

    def remove_unlisted_files(self) -> None:
        """Shard files that no complete shard names: superseded writes of a shard (a retried or re-executed
        task), or a failed shard's partial output. Never read; removed so that they take no space."""
        out = Location(self.out_dir)
        for split, split_data in self.data["splits"].items():
            listed = {file for shard in split_data["shards"].values() if shard["status"] == "complete"
                      for file in shard.get("files", {})}
            for name in out.list(split):
                if name.startswith("shard-") and name not in listed:
                    out.delete_file(f"{split}/{name}")

    def write(self) -> None:
        write_manifest(self.out_dir, self.data)


def _remove_temporaries(out: Location, splits) -> None:
    """Temporary files of an interrupted run: never read (only manifest-listed files are), removed on resume."""
    for folder in ("", *splits):
        for name in out.list(folder):
            if name.startswith(".") and ".tmp-" in name:
                out.delete_file(f"{folder}/{name}" if folder else name)


def _remove_outputs(out: Location, splits: list[str]) -> None:
    """--overwrite: remove what a raypipe build wrote (manifest and split folders), nothing else."""
    for split in dict.fromkeys([*SPLITS, *splits]):
        out.delete_dir(split)
    out.delete_file(MANIFEST)


def summarize(out_dir: str) -> dict[str, dict[str, int]]:
    """Shards per status and split, for `raypipe status`."""
    manifest = read_manifest(out_dir)
    summary: dict[str, dict[str, int]] = {}
    for split, split_data in manifest["splits"].items():
        for shard in split_data["shards"].values():
            summary.setdefault(split, {}).setdefault(shard["status"], 0)
            summary[split][shard["status"]] += 1
    return summary


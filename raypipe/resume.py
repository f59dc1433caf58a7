"""Whether a build starts afresh, resumes, or is refused: the pipeline's policy over an output folder.

A rerun with the same configuration takes over the manifest and skips its complete shards (rechecked by sha256 first);
a rerun with another configuration is refused, or starts over with --overwrite, so shards of two configurations never
mix. Fields that change how a build runs, never what it writes (declared `runtime` on their knobs), may change on a
resume. A configuration recorded by an earlier release is read as this one would have recorded it
(knobs.recorded_config): a field it lacks is the field's declared default, and so is a null it recorded for a field
that no longer takes None (an optional setting then left unset, which every such field was).
"""

from __future__ import annotations

from typing import Any

from raypipe import __version__
from raypipe.config import BuildConfig
from raypipe.errors import UserError
from raypipe.fs import Location
from raypipe.knobs import declared_defaults, recorded_config, runtime_fields
from raypipe.output import MANIFEST, BuildManifest, BuildRecord, FeatureLayout, ModelRecord, now, read_manifest
from raypipe.plan import SPLITS, BuildInputs, ShardPlan


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
    existed (a build made by an earlier release) then still resumes. Fields declared runtime (config.knob) may
    differ."""
    a, b = {**(defaults or {}), **_flatten(old)}, _flatten(new)
    runtime = runtime_fields(BuildConfig)
    return sorted(k for k in set(a) | set(b) if k not in runtime and a.get(k) != b.get(k))


def open_build(config: BuildConfig, inputs: BuildInputs, plans: list[ShardPlan], overwrite: bool) -> BuildManifest:
    """The manifest this run continues: the existing one when its configuration matches, else a new one."""
    out = Location(config.out_dir)
    resolved = config.to_dict()
    if out.is_file(MANIFEST):
        old = read_manifest(out)
        differing = config_differences(recorded_config(BuildConfig, old.config or {}), resolved,
                                       declared_defaults(BuildConfig))
        if differing and not overwrite:
            raise UserError(
                f"{config.out_dir} holds a build with another configuration (differs in: {', '.join(differing)}); "
                "use another --out-dir, or --overwrite to replace it"
            )
        if not differing:
            manifest = BuildManifest(out, old)
            old.config = resolved  # runtime fields may have changed
            manifest.recheck_complete_shards()
            manifest.plan(plans)
            manifest.remove_temporaries()
            manifest.write()
            return manifest
        _remove_outputs(out, list(old.splits))
    elif out.list() and not overwrite:
        raise UserError(f"{config.out_dir} is not empty and has no {MANIFEST}; choose an empty or new --out-dir")
    manifest = BuildManifest(out, new_record(config, inputs))
    manifest.plan(plans)
    manifest.write()
    return manifest


def new_record(config: BuildConfig, inputs: BuildInputs) -> BuildRecord:
    model = config.model
    return BuildRecord(
        raypipe_version=__version__, created_at=now(), config=config.to_dict(),
        model=ModelRecord(model_id=model.model_id, local_path=inputs.local_model_path, num_layers=inputs.num_layers,
                          hidden_size=inputs.hidden_size),
        features=FeatureLayout(
            shape=["rows", "layers", "positions", "hidden"], layers=inputs.layers,
            layer_convention="index into HF hidden_states: 0 = embeddings, i = output of decoder layer i "
                             "(the last one after the final norm)",
            positions=inputs.positions,
            position_convention="negative, counted from the prompt's end: -1 = last prompt token",
            hidden_size=inputs.hidden_size, dtype=model.dtype),
        labels=dict(inputs.labels), absent_labels=inputs.absent_labels, skipped_rows={}, splits={})


def _remove_outputs(out: Location, splits: list[str]) -> None:
    """--overwrite: remove what a raypipe build wrote (manifest and split folders), nothing else."""
    for split in dict.fromkeys([*SPLITS, *splits]):
        out.delete_dir(split)
    out.delete_file(MANIFEST)

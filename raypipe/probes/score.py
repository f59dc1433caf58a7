"""`raypipe score PROBE --data-dir BUILD --out-dir DIR`: a saved probe (saved.py) applied to every split of a build.

The build may be any other build with the probe's shape: a dataset built later, another domain, a new checkpoint of
the model (with --any-model). Before any work the probe's card is checked against the build's manifest: the model
(its id, layer count and hidden size) and the probe's layer and position must be there, else one line says which
differs. Then, as the probe commands do, one Ray task reads only the probe's (layer, position) slice of every split
(every shard file's sha256 checked first, on the cluster) and applies the probe. Writes to DIR:

    scores.parquet     split, row_id, score (P(label = 1), the regression value, or score_<class> per class) and the
                       label's value where the build has the probe's label (a row whose features are not finite
                       scores NaN, is counted under its split's `non_finite_scores` and left out of the metric)
    score.json         the probe's card, the build, and per split: rows, and where the label is known its metric with
                       a bootstrap CI and permutation p-value, and (binary) its calibration
    reliability.png    binary probes with a labelled split: the reliability of the scores on each split
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raypipe.errors import UserError
from raypipe.fs import Location
from raypipe.output import Build, BuildRecord, LabelDefinition
from raypipe.probes import plots
from raypipe.probes.blocks import Block, run_blocks
from raypipe.probes.config import ScoreConfig
from raypipe.probes.dataset import resolve_layers, resolve_positions, split_labels
from raypipe.probes.metrics import calibration, metric_name, significance
from raypipe.probes.saved import SavedProbe, load_saved_probe, model_record


@dataclass
class ScoreWork:
    data_dir: str
    layer_index: int  # into the build's stored layer and position axes
    position_index: int
    probe: SavedProbe


def check_fits(probe: SavedProbe, manifest: BuildRecord, data_dir: str, any_model: bool) -> tuple[int, int]:
    """(layer index, position index) of the probe's cell in this build; UserError naming what does not match."""
    card, model = probe.card, model_record(manifest)
    wanted = card["model"]
    if wanted["id"] != model["id"] and not any_model:
        raise UserError(f"the probe was fitted on hidden states of {wanted['id']}, {data_dir} was built with "
                        f"{model['id']}: pass --any-model to score another checkpoint of the same shape")
    for key, what in (("hidden_size", "hidden size"), ("num_layers", "layer count")):
        if wanted[key] != model[key]:
            raise UserError(f"the probe's model has {what} {wanted[key]}, {data_dir}'s model {model[key]}: a probe "
                            "only reads hidden states of its own shape")
    if probe.hidden_size != model["hidden_size"]:
        raise UserError(f"{card.get('weights')} holds weights for hidden size {probe.hidden_size}, "
                        f"{data_dir} stores {model['hidden_size']}")
    layer = resolve_layers(manifest, [card["layer"]])[0]
    position = resolve_positions(manifest, [card["position"]])[0]
    return layer, position


def score_block(work: ScoreWork, block: Block, device: str) -> dict:
    """Where it runs: read the probe's slice of every split and apply the probe. {split: (row ids, scores)}."""
    build = Build(work.data_dir)
    out = {}
    for split in build.splits():
        features = build.features(split, [work.layer_index], [work.position_index])[:, 0, 0]
        row_id = build.tensors(split, ["row_id"])["row_id"].numpy()
        out[split] = (row_id, work.probe.predict(features.numpy()))
    return {"splits": out}


def _class_ids(values: np.ndarray, definition: LabelDefinition, classes: list[str]) -> np.ndarray:
    """A multiclass label's values as the probe's class ids (NaN where the class is not one of the probe's)."""
    names = definition.classes
    index = {name: i for i, name in enumerate(classes)}
    out = np.full(len(values), np.nan)
    for row, value in enumerate(values):
        if value == value:
            name = names[int(value)] if names else f"{value:g}"
            out[row] = index.get(name, np.nan)
    return out


def run_score(config: ScoreConfig) -> dict:
    if not config.probe:
        raise UserError("no probe given: raypipe score PROBE --data-dir BUILD --out-dir DIR (PROBE: a saved probe's "
                        ".safetensors, e.g. a sweep's probe.safetensors)")
    probe = load_saved_probe(config.probe)
    build = Build(config.data_dir)
    layer_index, position_index = check_fits(probe, build.manifest, config.data_dir, config.any_model)
    card, task = probe.card, probe.card["task_type"]
    result = run_blocks(score_block, ScoreWork(build.out_dir, layer_index, position_index, probe),
                        [Block(0, (0,))], build, config.executor, config.device)[0]

    label = card["label"]
    definitions = build.labels
    labelled = label in definitions
    columns: dict[str, list] = {"split": [], "row_id": []}
    per_split, curves = {}, {}
    for split, (row_id, scores) in result["splits"].items():
        columns["split"] += [split] * len(row_id)
        columns["row_id"] += row_id.tolist()
        if task == "multiclass":
            for c, name in enumerate(card["classes"]):
                columns.setdefault(f"score_{name}", []).extend(scores[:, c].tolist())
        else:
            columns.setdefault("score", []).extend(scores.tolist())
        entry: dict = {"rows": len(row_id)}
        finite = np.isfinite(scores).all(axis=1) if scores.ndim == 2 else np.isfinite(scores)
        if not finite.all():  # the build's features were not finite there (an overflowed float16 build's can be)
            entry["non_finite_scores"] = int((~finite).sum())
        if labelled:
            values = split_labels(build, split, [label])[0][label]
            if task == "multiclass":
                values = _class_ids(values, definitions[label], card["classes"])
            columns.setdefault("label", []).extend(values.tolist())
            known = ~np.isnan(values) & finite
            entry["labelled_rows"] = int(known.sum())
            if known.sum() and len(np.unique(values[known])) > 1:
                entry["significance"] = significance(scores[known], values[known], task, config.resamples,
                                                     config.seed)
                if task == "classification":
                    entry["calibration"] = calibration(scores[known], values[known], resamples=config.resamples,
                                                       seed=config.seed)
                    curves[split] = entry["calibration"]
            else:
                entry["significance"] = None
                entry["why_no_metric"] = "no labelled rows" if not known.sum() else "a single class"
        per_split[split] = entry
    summary = {"probe": config.probe, "card": card, "data_dir": config.data_dir,
               "model": model_record(build.manifest), "label": label if labelled else None,
               "metric": metric_name(task) if labelled else None,
               **({} if labelled else {"why_no_metric": f"{config.data_dir} has no label {label!r}"}),
               "splits": per_split, "ran": result["ran"]}
    _write(Location(config.out_dir), columns, summary, curves, card)
    return summary


def _write(location: Location, columns: dict, summary: dict, curves: dict, card: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    location.write_atomic("scores.parquet", sink.getvalue().to_pybytes())
    location.write_json("score.json", summary)
    if curves:
        plots.reliability(location, "reliability.png", curves,
                          f"{card['label']} probe (layer {card['layer']}, {card['position']}) by split")

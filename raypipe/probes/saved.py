"""Saved probes: what a probe command chose, in a form that scores any later build (`raypipe score`).

A saved probe is two files side by side, never a pickle:

    NAME.safetensors   weight [C, H], bias [C], feature_mean [H], feature_std [H] (float32)
    NAME.json          its card: the model it reads (id, revision where the hub path gives one, layers, hidden size),
                       layer and position as the build names them, label, task type, classes, the build it was
                       fitted on (manifest sha256), the command that chose it and its scores

Applied to hidden states x [n, H]: z = (x - feature_mean) / feature_std, logits = z @ weight.T + bias; a binary
probe's score is sigmoid(logits[:, 0]) = P(label = 1), a multiclass one's softmax(logits) over `classes`, a regression
probe's logits[:, 0]. `raypipe train` standardises (its mean and std are stored); the sweep fits raw features
(mean 0, std 1); evaluate standardises per cell.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raypipe.errors import UserError
from raypipe.fs import Location
from raypipe.output import MANIFEST, BuildRecord

FORMAT = "raypipe.linear-probe/1"
TENSORS = ("weight", "bias", "feature_mean", "feature_std")


@dataclass
class SavedProbe:
    weight: np.ndarray  # [C, H]: C = 1 (binary, regression) or the number of classes
    bias: np.ndarray  # [C]
    feature_mean: np.ndarray  # [H]
    feature_std: np.ndarray  # [H]
    card: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_fit(cls, weights: np.ndarray, intercept: bool, hidden: int, card: dict,
                 mean: np.ndarray | None = None, std: np.ndarray | None = None) -> "SavedProbe":
        """From a solver's weights [H (+1 intercept)] or [H (+1), C] (raypipe.probes.solvers' layout)."""
        w = np.asarray(weights, dtype=np.float32)
        w = w[:, None] if w.ndim == 1 else w  # [H(+1), C]
        bias = w[hidden] if intercept else np.zeros(w.shape[1], dtype=np.float32)
        return cls(np.ascontiguousarray(w[:hidden].T), np.asarray(bias, dtype=np.float32),
                   np.zeros(hidden, np.float32) if mean is None else np.asarray(mean, np.float32).reshape(hidden),
                   np.ones(hidden, np.float32) if std is None else np.asarray(std, np.float32).reshape(hidden), card)

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])

    def logits(self, features) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        return ((x - self.feature_mean) / self.feature_std) @ self.weight.T + self.bias

    def predict(self, features) -> np.ndarray:
        """P(label = 1) [n] (binary), class probabilities [n, C] (multiclass) or values [n] (regression)."""
        logits = self.logits(features).astype(np.float64)
        task = self.card.get("task_type")
        if task == "multiclass":
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            return shifted / shifted.sum(axis=1, keepdims=True)
        if task == "classification":
            return 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return logits[:, 0]

    def tensors(self) -> dict[str, np.ndarray]:
        return {name: np.ascontiguousarray(getattr(self, name), dtype=np.float32) for name in TENSORS}


def model_record(manifest: BuildRecord) -> dict:
    """The model a build read, as a card names it: its id, the hub revision where its local path is a hub snapshot
    (`.../snapshots/<commit>/`), its layer count and hidden size."""
    model = manifest.model
    snapshot = re.search(r"/snapshots/([0-9a-f]{40})(/|$)", model.local_path or "")
    return {"id": model.model_id, "revision": snapshot[1] if snapshot else None, "num_layers": model.num_layers,
            "hidden_size": manifest.hidden_size}


def build_record(build) -> dict:
    return {"data_dir": build.out_dir, "manifest_sha256": build.location.sha256(MANIFEST)}


def origin(build) -> dict:
    """What every card of probes fitted on this reader.Build says of where they come from: the model and the build
    (its manifest's sha256, read once however many probes a command saves)."""
    return {"model": model_record(build.manifest), "build": build_record(build)}


def card(fitted_on: dict, produced_by: str, label: str, task: str, layer: int, position, scores: dict,
         classes: list | None = None, **extra) -> dict:
    """A probe's card (see the module's docstring); `fitted_on`: `origin(build)` of the build it was fitted on."""
    return {"format": FORMAT, "produced_by": produced_by, "label": label, "task_type": task,
            "classes": classes, "layer": int(layer), "position": position, **fitted_on, "scores": scores, **extra}


def cell_file_names(prefix: str, cells: list[tuple]) -> list[str]:
    """File names (no suffix) for probes of (position, layer) cells: `{prefix}pos_{position}_layer_{layer}`, the
    position made safe for any filesystem ('answer:-2' -> 'answer_-2'; a marker's text may hold '/' or spaces), and
    a name that two markers would share numbered."""
    names: list[str] = []
    for position, layer in cells:
        name = f"{prefix}pos_{re.sub(r'[^A-Za-z0-9._-]+', '_', str(position))}_layer_{layer}"
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names


def save_probe(location: Location, name: str, probe: SavedProbe) -> str:
    """Write NAME.safetensors and NAME.json (the card, with the weights file's name and sha256); returns the
    weights' path."""
    from safetensors.numpy import save

    data = save(probe.tensors(), metadata={"format": FORMAT, "card": f"{os.path.basename(name)}.json"})
    location.write_atomic(f"{name}.safetensors", data)
    card = {**probe.card, "weights": f"{os.path.basename(name)}.safetensors",
            "weights_sha256": hashlib.sha256(data).hexdigest(), "hidden_size": probe.hidden_size}
    location.write_json(f"{name}.json", card)
    return location.path(f"{name}.safetensors")


def load_saved_probe(path: str) -> SavedProbe:
    """A saved probe from its .safetensors path (or its .json card's); one clear error when either file is missing,
    the weights are not the card's (sha256) or not a raypipe probe."""
    from safetensors.numpy import load

    base = path[:-len(".safetensors")] if path.endswith(".safetensors") else \
        path[:-len(".json")] if path.endswith(".json") else path
    folder, name = os.path.dirname(base) or ".", os.path.basename(base)
    location = Location(folder)
    try:
        card = json.loads(location.read_bytes(f"{name}.json"))
        data = location.read_bytes(f"{name}.safetensors")
    except FileNotFoundError as exc:
        raise UserError(f"no saved probe at {base}: {exc.filename or exc} is missing (a probe is NAME.safetensors "
                        "with its card NAME.json beside it)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"the card {base}.json is not JSON: {exc}") from None
    if card.get("format") != FORMAT:
        raise UserError(f"{base}.json is not a raypipe probe card (format {card.get('format')!r}, expected "
                        f"{FORMAT!r})")
    if card.get("weights_sha256") and hashlib.sha256(data).hexdigest() != card["weights_sha256"]:
        raise UserError(f"{base}.safetensors does not match its card's sha256: the weights were changed or "
                        "replaced")
    tensors = load(data)
    missing = [key for key in TENSORS if key not in tensors]
    if missing:
        raise UserError(f"{base}.safetensors lacks {', '.join(missing)}: not a raypipe linear probe")
    return SavedProbe(*(tensors[key] for key in TENSORS), card=card)

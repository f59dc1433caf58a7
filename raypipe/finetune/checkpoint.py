"""A finetune's epoch checkpoint as plain files (no pickles): the trainable weights and the optimizer's tensors as
safetensors, everything else (epoch, history, optimizer scalars, scheduler, W&B run id) as JSON. Restoring it
gives the exact state the run had after that epoch, so a resumed run continues as an uninterrupted one would."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

WEIGHTS, OPTIMIZER, STATE = "trainable.safetensors", "optimizer.safetensors", "state.json"


def save_state(folder: str, module, optimizer, scheduler, meta: dict) -> None:
    """Write the trainable parameters of `module`, the optimizer, the scheduler and `meta` (JSON-able) to folder."""
    from safetensors.torch import save_file

    weights = {name: p.detach().cpu().contiguous() for name, p in module.named_parameters() if p.requires_grad}
    save_file(weights, os.path.join(folder, WEIGHTS))
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if hasattr(value, "detach"):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    save_file(tensors, os.path.join(folder, OPTIMIZER))
    scheduler_state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    with open(os.path.join(folder, STATE), "w") as f:
        json.dump({**meta, "optimizer_param_groups": state["param_groups"], "optimizer_scalars": scalars,
                   "scheduler": scheduler_state, "trainable": sorted(weights)}, f)


def restore_state(folder: str, module, optimizer, scheduler, device) -> dict:
    """Load what `save_state` wrote into module, optimizer and scheduler; return its `meta` part."""
    import torch
    from safetensors.torch import load_file

    with open(os.path.join(folder, STATE)) as f:
        state = json.load(f)
    parameters = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in load_file(os.path.join(folder, WEIGHTS)).items():
            parameters[name].copy_(value.to(parameters[name].dtype))
    per_index: dict[int, dict] = {}
    for key, value in load_file(os.path.join(folder, OPTIMIZER)).items():
        index, name = key.split(".", 1)
        per_index.setdefault(int(index), {})[name] = value.to(device) if name != "step" else value
    for key, value in state.pop("optimizer_scalars").items():
        index, name = key.split(".", 1)
        per_index.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_index, "param_groups": state.pop("optimizer_param_groups")})
    scheduler.load_state_dict({**state.pop("scheduler"), "lr_lambdas": [None]})
    state.pop("trainable")
    return state


def atomic_folder(final: str, write) -> None:
    """Write a folder under a temporary name (`write(tmp)`), then swap it into place: a rerun replaces a
    half-written one, and a failure leaves the old folder (or none), never a part."""
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}-", dir=parent)
    try:
        write(tmp)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

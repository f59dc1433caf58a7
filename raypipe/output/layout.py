"""Where a build's files are, relative to its folder (a local path or a pyarrow filesystem URI: fs.Location).

    manifest.json
    train/shard-00000-<write>.safetensors        features [n, L, P, H], row_id [n], prompt_length [n], label.<name> [n]
    train/shard-00000-<write>.rollouts.parquet   row_id, prompt, prompt_token_ids, answer, token_ids, text, ...
    test/...

`<write>` is a random token of the write that made the files: two writes of one shard (a task Ray ran again after a
node was lost, a worker still finishing on a node that was given up) never overwrite each other's files, so the files
the manifest names are always the ones whose sha256 it holds. Every file is written under a temporary name
(`.NAME.tmp-<token>`), then renamed into place.
"""

from __future__ import annotations

from raypipe.fs import write_token

MANIFEST = "manifest.json"
FEATURES = "features"  # the tensor of hidden states in a shard's safetensors file
LABEL_PREFIX = "label."  # a stored label's tensor: label.<name>
TENSORS, ROLLOUTS = ".safetensors", ".rollouts.parquet"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_files(index: int) -> tuple[str, str]:
    """A new write's file names for shard `index`: its safetensors file and its rollout sidecar."""
    stem = f"{shard_name(index)}-{write_token()}"
    return f"{stem}{TENSORS}", f"{stem}{ROLLOUTS}"


def is_shard_file(name: str) -> bool:
    return name.startswith("shard-")


def is_temporary(name: str) -> bool:
    return name.startswith(".") and ".tmp-" in name

"""A build opened once: its location, its manifest and its complete shards, read by slices.

Probes fit one block of cells at a time (a layer, every position), so `Build.features` reads exactly that block from
each shard: memory-mapped through safetensors' `safe_open(...).get_slice` where the build is on a local disk, and by
range reads of the same bytes on an object store. No reader ever holds a whole shard file: checksums are verified by
streaming each file (`Build.verify_file`), and the small per-row tensors (row ids, labels, prompt lengths) are read
alone. Only complete shards (listed in the manifest with their sha256) are ever read.
"""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Any

from raypipe.config import torch_dtype
from raypipe.errors import UserError
from raypipe.fs import Location
from raypipe.output.layout import FEATURES, ROLLOUTS, TENSORS
from raypipe.output.manifest import read_manifest, verify_file
from raypipe.output.records import BuildRecord, ShardRecord

# safetensors dtype names -> (numpy dtype name, bytes); bfloat16 has no numpy dtype and goes through torch
_DTYPES = {"F32": ("float32", 4), "F16": ("float16", 2), "BF16": (None, 2), "F64": ("float64", 8),
           "I64": ("int64", 8), "I32": ("int32", 4)}


class Build:
    """A build's output folder: `Build(out_dir)` reads the manifest once; every read goes through this object."""

    def __init__(self, out_dir: str, manifest: BuildRecord | None = None, ranged: bool | None = None):
        self.location = Location(str(out_dir))
        # Absolute: the path travels to Ray tasks, which run in their worker's folder, not the driver's.
        self.out_dir = str(out_dir) if "://" in str(out_dir) else self.location.root
        self.ranged = ranged  # None: range reads where the build is not on a local disk (True forces them: tests)
        self.manifest = manifest if manifest is not None else read_manifest(self.location)

    # --- what the build holds ------------------------------------------------------------------------------------

    @property
    def layers(self) -> list[int]:
        return self.manifest.features.layers

    @property
    def positions(self) -> list:
        return self.manifest.features.positions

    @property
    def hidden_size(self) -> int:
        return self.manifest.hidden_size

    @property
    def labels(self):
        """Label name -> its definition (records.LabelDefinition)."""
        return self.manifest.labels

    def splits(self) -> list[str]:
        """Splits with at least one complete shard, train and test first."""
        names = [name for name in self.manifest.splits if self.manifest.complete_shards(name)]
        order = {"train": 0, "test": 1}
        return sorted(names, key=lambda name: (order.get(name, 2), name))

    def shards(self, split: str) -> list[ShardRecord]:
        """The complete shards of a split, in shard order."""
        if split not in self.manifest.splits:
            raise UserError(f"split {split!r} is not in {self.out_dir}; splits: {', '.join(self.manifest.splits)}")
        shards = self.manifest.complete_shards(split)
        if not shards:
            raise UserError(f"split {split!r} of {self.out_dir} has no complete shard")
        return shards

    def rows(self, split: str) -> int:
        return sum(int(shard.rows) for shard in self.shards(split))

    def files(self, splits: list[str] | None = None) -> list[tuple[str, str]]:
        """(path relative to the build, sha256) of every file of every complete shard of these splits."""
        return [(f"{split}/{name}", sha) for split in (splits or self.splits())
                for shard in self.shards(split) for name, sha in shard.files.items()]

    # --- checks ----------------------------------------------------------------------------------------------------

    def verify_file(self, relative: str, expected: str) -> None:
        verify_file(self.location, relative, expected)

    def verify(self, splits: list[str] | None = None) -> None:
        for relative, expected in self.files(splits):
            self.verify_file(relative, expected)

    # --- reading ---------------------------------------------------------------------------------------------------

    def _tensor_file(self, split: str, shard: ShardRecord) -> str:
        relative = f"{split}/{shard.file_ending(TENSORS)}"
        if not self.location.is_file(relative):
            raise UserError(f"shard file {self.location.path(relative)} is missing")
        return relative

    def tensors(self, split: str, keys: list[str] | None = None) -> dict[str, Any]:
        """The small per-row tensors of a split (every key but the features, or those named), concatenated in shard
        order. A key that some shard lacks is left out."""
        import torch

        parts: dict[str, list] = {}
        shards = self.shards(split)
        for record in shards:
            with open_shard(self.location, self._tensor_file(split, record), self.ranged) as shard:
                for key in keys if keys is not None else [k for k in shard.keys() if k != FEATURES]:
                    if key in shard.keys():
                        parts.setdefault(key, []).append(shard.tensor(key))
        return {key: torch.cat(values) for key, values in parts.items() if len(values) == len(shards)}

    def features(self, split: str, layers: list[int] | None, positions: list[int] | None,
                 dtype: Any = "float32") -> Any:
        """[rows, len(layers), len(positions), hidden] in `dtype` (None: as stored): only these (indices into the
        stored layer and position axes; None: all) are read from each shard."""
        import torch

        parts = []
        for record in self.shards(split):
            with open_shard(self.location, self._tensor_file(split, record), self.ranged) as shard:
                block = shard.block(layers, positions)
                parts.append(block if dtype is None else block.to(torch_dtype(dtype)))
        return torch.cat(parts)

    def rollouts(self, split: str, columns: list[str] | None = None):
        """The rollout sidecars of a split as one pyarrow table (optionally some columns), read column by column."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for shard in self.shards(split):
            with self.location.fs.open_input_file(self.location.path(f"{split}/{shard.file_ending(ROLLOUTS)}")) as f:
                tables.append(pq.read_table(f, columns=columns))
        return pa.concat_tables(tables)


# --- one shard file ------------------------------------------------------------------------------------------------

class _SafeOpen:
    """A local shard: safetensors' memory map, slices copied out (only the pages they touch are read)."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self._context = safe_open(path, framework="pt")
        self._file = self._context.__enter__()

    def keys(self) -> list[str]:
        return list(self._file.keys())

    def tensor(self, key: str):
        return self._file.get_tensor(key)

    def block(self, layers: list[int] | None, positions: list[int] | None):
        import torch

        features = self._file.get_slice(FEATURES)
        shape = features.get_shape()
        layers = range(shape[1]) if layers is None else layers
        positions = list(range(shape[2])) if positions is None else positions
        low, high = min(positions), max(positions) + 1
        wanted = [p - low for p in positions]
        parts = [features[:, layer:layer + 1, low:high][:, :, wanted] for layer in layers]
        return torch.cat(parts, dim=1)

    def close(self) -> None:
        self._context.__exit__(None, None, None)


class _RangeReads:
    """A shard on an object store: its header read once, then only the byte ranges of the wanted slices."""

    def __init__(self, location: Location, relative: str):
        self._file = location.fs.open_input_file(location.path(relative))
        (header_size,) = struct.unpack("<Q", self._file.read_at(8, 0))
        self._header = json.loads(self._file.read_at(header_size, 8))
        self._header.pop("__metadata__", None)
        self._start = 8 + header_size

    def keys(self) -> list[str]:
        return list(self._header)

    def _decode(self, data: bytes, dtype: str, shape: list[int]):
        import numpy as np
        import torch

        numpy_dtype, _ = _DTYPES[dtype]
        if numpy_dtype is None:  # bfloat16
            return torch.frombuffer(bytearray(data), dtype=torch.bfloat16).reshape(shape)
        return torch.from_numpy(np.frombuffer(data, dtype=numpy_dtype).copy()).reshape(shape)

    def tensor(self, key: str):
        info = self._header[key]
        begin, end = info["data_offsets"]
        return self._decode(self._file.read_at(end - begin, self._start + begin), info["dtype"], info["shape"])

    def block(self, layers: list[int] | None, positions: list[int] | None):
        """One read per (row, layer): the contiguous run of positions [min, max] of that layer, every hidden unit."""
        import torch

        info = self._header[FEATURES]
        rows, n_layers, n_positions, hidden = info["shape"]
        layers = range(n_layers) if layers is None else layers
        positions = list(range(n_positions)) if positions is None else positions
        size = _DTYPES[info["dtype"]][1]
        low, high = min(positions), max(positions) + 1
        wanted = [p - low for p in positions]
        run = (high - low) * hidden * size
        base = self._start + info["data_offsets"][0]
        parts = []
        for r in range(rows):
            for layer in layers:
                offset = base + ((r * n_layers + layer) * n_positions + low) * hidden * size
                parts.append(self._decode(self._file.read_at(run, offset), info["dtype"], [high - low, hidden])[wanted])
        if not parts:
            return self._decode(b"", info["dtype"], [0, len(layers), len(positions), hidden])
        return torch.stack(parts).reshape(rows, len(layers), len(positions), hidden)

    def close(self) -> None:
        self._file.close()


@contextlib.contextmanager
def open_shard(location: Location, relative: str, ranged: bool | None = None):
    """A shard's tensor file: the memory map where it is local, range reads otherwise (or as `ranged` says)."""
    shard = _RangeReads(location, relative) if (not location.local if ranged is None else ranged) else \
        _SafeOpen(location.path(relative))
    try:
        yield shard
    finally:
        shard.close()


# --- whole splits, for small builds, tests and notebooks -------------------------------------------------------------

def load_split(out_dir: str, split: str, verify: bool = True, layers: list[int] | None = None,
               positions: list[int] | None = None) -> dict[str, Any]:
    """Every complete shard of a split as concatenated tensors: `features` [rows, L, P, H] (only the given indices
    into the stored layer and position axes, if any), `row_id`, `prompt_length` and each `label.<name>`. Files are
    checked against their sha256 first (streamed)."""
    build = Build(out_dir)
    if verify:
        build.verify([split])
    tensors = build.tensors(split)
    tensors["features"] = build.features(split, layers, positions, dtype=None)
    return tensors


def load_rollouts(out_dir: str, split: str, verify: bool = True, columns: list[str] | None = None):
    """The rollout sidecars of every complete shard of a split as one pyarrow table (optionally some columns)."""
    build = Build(out_dir)
    if verify:
        build.verify([split])
    return build.rollouts(split, columns)

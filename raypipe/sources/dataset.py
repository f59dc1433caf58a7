"""The dataset prompt source: a local .parquet/.jsonl/.csv file, a folder read as `datasets` reads it (the hub's
layout, with configs, or a `save_to_disk` one), or a hub dataset by name; SOURCE#CONFIG names a config. Every
failure (a bad path, a missing split or config, a hub error) is one UserError line naming what exists."""

from __future__ import annotations

from pathlib import Path

from raypipe.errors import UserError

LOCAL_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
SCHEMES = ("s3", "gs", "hf", "file", "http", "https")  # SCHEME: starts an address, not a source kind


class DatasetSource:
    """A spec without a kind's prefix: the rows of one split of a dataset, as they are stored."""

    usage = "a dataset (a hub name such as openai/gsm8k#main, a .parquet/.jsonl/.csv file, or a folder of them)"

    def load(self, spec: str, config: str | None, split: str, size: int, seed: int):
        """One split as a `datasets.Dataset`.

        A local file is one split whatever the split name. A local folder is read as `datasets` reads it: its splits
        come from its file names (the hub's `data/train-00000-of-00001.parquet` layout, or `train.jsonl`, ...), or
        from a `save_to_disk` layout; a split it does not have is an error that lists the ones it has. A folder with
        configs (its README.md's `configs:`, as a hub dataset with configs is laid out) needs one named, and lists
        them.
        """
        import datasets

        path = Path(spec).expanduser()
        if path.is_file():
            if path.suffix not in LOCAL_FORMATS:
                raise UserError(f"cannot read {spec}: unsupported file type {path.suffix!r} (use .parquet, .jsonl, "
                                f".csv)")
            if path.stat().st_size == 0:  # `datasets` would answer with a bare StopIteration
                raise UserError(f"dataset {spec} is empty")
            return _read(spec, lambda: datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=[str(path)],
                                                             split="train"))
        if path.is_dir():
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                if config is not None:
                    raise UserError(f"{spec} is a saved dataset (save_to_disk), which has no configs")
                return _saved_split(path, spec, split)
            _check_config(spec, config, _read(spec, lambda: datasets.get_dataset_config_names(str(path))))
            splits = _read(spec, lambda: [str(s) for s in
                                          datasets.load_dataset_builder(str(path), config).config.data_files])
            _check_split(spec, split, splits)
            return _read(spec, lambda: datasets.load_dataset(str(path), config, split=split))
        if spec.startswith((".", "/", "~")) or Path(spec).suffix in LOCAL_FORMATS:
            raise UserError(f"cannot read {spec}: no such file or folder")
        try:
            return datasets.load_dataset(spec, config, split=split)
        except Exception as exc:  # noqa: BLE001 - hub errors come in many types
            named = f"{spec!r} config {config!r}" if config else repr(spec)
            raise UserError(f"cannot load dataset {named} split {split!r}: {_first_line(exc)}") from exc

    def offered_splits(self, spec: str, seed: int) -> list[tuple[str, str]]:
        return []

    def split_seed(self, seed: int, offset: int) -> int:
        """A dataset's rows do not depend on a seed."""
        return seed


def _check_config(spec: str, config: str | None, configs: list[str]) -> None:
    """A folder with several configs needs one named (as the hub's load_dataset does); a named one must exist."""
    declared = [c for c in configs if c != "default"]
    if config is None and len(declared) > 1:
        raise UserError(f"{spec} has configs {', '.join(declared)}; name one: {spec}#{declared[0]}")
    if config is not None and config not in configs:
        raise UserError(f"{spec} has no config {config!r}; its configs are: {', '.join(configs)}")


def _saved_split(path: Path, spec: str, split: str):
    """One split of a `Dataset.save_to_disk` / `DatasetDict.save_to_disk` folder. A saved Dataset is one split: its
    own split name, or 'train' when it has none."""
    import datasets

    saved = _read(spec, lambda: datasets.load_from_disk(str(path)))
    if isinstance(saved, datasets.DatasetDict):
        _check_split(spec, split, list(saved))
        return saved[split]
    _check_split(spec, split, [str(saved.split or "train")])
    return saved


def _check_split(spec: str, split: str, splits: list[str]) -> None:
    if split not in splits:
        raise UserError(f"split {split!r} is not in {spec}; its splits are: {', '.join(splits) or 'none'}")


def _read(spec: str, load):
    try:
        return load()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse/permission failure is the user's data
        raise UserError(f"cannot read {spec}: {type(exc).__name__}: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

"""Prompt sources, train/test splits and chat templating: everything before the first model call.

A source is a hub dataset name (`datasets.load_dataset`), a local .parquet/.jsonl/.csv file or folder of them, or
the built-in arithmetic generator (`builtin:arithmetic`, the default when no dataset is given). Every row keeps a
stable integer `row_id`: its index in its source (or the source's own integer id column, `--id-field`), so a rerun
(or a resume) sees the same ids.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raypipe.config import SourceConfig
from raypipe.errors import UserError

BUILTIN_PREFIX = "builtin:"
LOCAL_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


@dataclass
class PromptRow:
    row_id: int
    prompt: str  # exactly the text given to the model (chat template applied, when asked)
    prompt_token_ids: list[int]
    answer: str | None = None
    columns: dict[str, float] = field(default_factory=dict)  # given label columns, carried into the shards
    offsets: list[int] | None = None  # this row's negative offset per feature position (markers vary by row)


# --- the built-in source -------------------------------------------------------------------------------------------

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Ema", "Finn", "Gia", "Hugo", "Iris", "Jon", "Kai", "Lena", "Milo", "Nora"]
_THINGS = ["apples", "marbles", "stickers", "books", "coins", "shells", "pencils", "cards", "stamps", "cookies"]


def arithmetic_problems(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Seeded arithmetic word problems with their integer answers, any number of them."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, friend = rng.sample(_NAMES, 2)
        thing = rng.choice(_THINGS)
        a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 9)
        kind = rng.randrange(5)
        if kind == 0:
            q, ans = f"{name} has {a} {thing} and buys {b} more. How many {thing} does {name} have now?", a + b
        elif kind == 1:
            a = a + b
            q, ans = f"{name} had {a} {thing} and gave {b} to {friend}. How many {thing} are left?", a - b
        elif kind == 2:
            q, ans = f"{name} fills {c} boxes with {b} {thing} each. How many {thing} is that in total?", b * c
        elif kind == 3:
            total = b * c
            q, ans = f"{name} shares {total} {thing} equally among {c} friends. How many does each friend get?", b
        else:
            q = (f"{name} has {a} {thing}, {friend} has {b} more than {name}, and they put them together. "
                 f"How many {thing} do they have?")
            ans = a + (a + b)
        rows.append({"prompt": q, "answer": str(ans)})
    return rows


# --- loading -------------------------------------------------------------------------------------------------------

def load_source(spec: str, split: str, builtin_size: int, seed: int):
    """Load one split of a dataset spec as a `datasets.Dataset`; failures become one-line UserErrors.

    A local file is one split whatever the split name. A local folder is read as `datasets` reads it: its splits
    come from its file names (the hub's `data/train-00000-of-00001.parquet` layout, or `train.jsonl`, ...), or from
    a `save_to_disk` layout; a split it does not have is an error that lists the ones it has.
    """
    import datasets

    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        if name != "arithmetic":
            raise UserError(f"unknown built-in prompt source {spec!r}; known: builtin:arithmetic")
        return datasets.Dataset.from_list(arithmetic_problems(builtin_size, seed))

    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix not in LOCAL_FORMATS:
            raise UserError(f"cannot read {spec}: unsupported file type {path.suffix!r} (use .parquet, .jsonl, .csv)")
        return _read(spec, lambda: datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=[str(path)],
                                                         split="train"))
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _saved_split(path, spec, split)
        splits = _read(spec, lambda: [str(s) for s in datasets.load_dataset_builder(str(path)).config.data_files])
        _check_split(spec, split, splits)
        return _read(spec, lambda: datasets.load_dataset(str(path), split=split))
    if spec.startswith((".", "/", "~")) or Path(spec).suffix in LOCAL_FORMATS:
        raise UserError(f"cannot read {spec}: no such file or folder")
    try:
        return datasets.load_dataset(spec, split=split)
    except Exception as exc:  # noqa: BLE001 - hub errors come in many types
        raise UserError(f"cannot load dataset {spec!r} split {split!r}: {_first_line(exc)}") from exc


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


# --- splits --------------------------------------------------------------------------------------------------------

def split_ids(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A deterministic seeded split of ids 0..n-1 into (train, test), each in ascending order."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(n * test_fraction)) if n > 1 else 0
    return sorted(order[n_test:]), sorted(order[:n_test])


def load_splits(source: SourceConfig) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, int]]]:
    """Rows per split as {'row_id', 'question', 'answer'}, and per split the rows skipped, counted by reason."""
    train_spec = source.train_dataset or f"{BUILTIN_PREFIX}arithmetic"
    train = _select(load_source(train_spec, source.train_split, source.builtin_size, source.seed), train_spec, source)
    if source.test_dataset is not None:
        test = _select(load_source(source.test_dataset, source.test_split, source.builtin_size, source.seed + 1),
                       source.test_dataset, source)
        parts = {"train": (train, range(len(train))), "test": (test, range(len(test)))}
    else:
        train_ids, test_ids = split_ids(len(train), source.test_fraction, source.seed)
        parts = {"train": (train, train_ids), "test": (train, test_ids)}
    rows, skipped = {}, {}
    for split, (dataset, ids) in parts.items():
        rows[split], skipped[split] = _rows(dataset, ids, source)
    return rows, skipped


def _select(dataset, spec: str, source: SourceConfig):
    if source.prompt_field not in dataset.column_names:
        raise UserError(
            f"prompt field {source.prompt_field!r} is not in {spec}; its columns are: {', '.join(dataset.column_names)}"
        )
    if source.id_field is not None and source.id_field not in dataset.column_names:
        raise UserError(f"id field {source.id_field!r} is not in {spec}; its columns are: "
                        f"{', '.join(dataset.column_names)}")
    for column in ([source.answer_field] if source.answer_field else []) + list(source.label_columns):
        if column not in dataset.column_names:
            kind = "answer field" if column == source.answer_field else "label column"
            raise UserError(f"{kind} {column!r} is not in {spec}; its columns are: {', '.join(dataset.column_names)}")
    if len(dataset) == 0:
        raise UserError(f"dataset {spec} is empty")
    if source.max_samples is not None:
        dataset = dataset.select(range(min(source.max_samples, len(dataset))))
    if source.id_field is not None:
        ids = dataset[source.id_field]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise UserError(f"id field {source.id_field!r} of {spec} must hold integers")
        duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
        if duplicates:
            raise UserError(f"id field {source.id_field!r} of {spec} has duplicate ids, e.g. {duplicates[:5]}")
    return dataset


def _rows(dataset, ids, source: SourceConfig) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Usable rows; a missing, empty or non-string prompt is skipped and counted, never fails the build."""
    questions = dataset[source.prompt_field]
    answer_field = source.answer_field or ("answer" if "answer" in dataset.column_names else None)
    answers = dataset[answer_field] if answer_field else None
    columns = {name: dataset[name] for name in source.label_columns}
    row_ids = dataset[source.id_field] if source.id_field is not None else None
    rows, skipped = [], {}
    for i in ids:
        question = questions[i]
        reason = ("missing_prompt" if question is None else "non_string_prompt" if not isinstance(question, str)
                  else "empty_prompt" if not question.strip() else None)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        rows.append({"row_id": i if row_ids is None else row_ids[i], "question": question,
                     "answer": None if answers is None or answers[i] is None else str(answers[i]),
                     "columns": {name: _label_value(values[i], name) for name, values in columns.items()}})
    return rows, skipped


def _label_value(value, column: str) -> float:
    """A given label as a float (booleans as 0/1); a missing value is NaN, which probes skip."""
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"label column {column!r} must hold numbers or booleans, got {value!r}")


# --- templating and tokenization -----------------------------------------------------------------------------------

def to_prompt_rows(rows: list[dict[str, Any]], tokenizer, chat_template: bool) -> list[PromptRow]:
    """Apply the chat template (or not) and tokenize once: vLLM and Transformers both get these exact ids."""
    if not rows:
        return []
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("the model's tokenizer has no chat template; pass --no-chat-template for raw prompts")
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": r["question"]}],
                                          add_generation_prompt=True, tokenize=False)
            for r in rows
        ]
    else:
        texts = [r["question"] for r in rows]
    # A templated prompt already holds its special tokens; a raw one gets the tokenizer's (e.g. BOS), as vLLM does.
    encoded = tokenizer(texts, add_special_tokens=not chat_template)["input_ids"]
    return [PromptRow(r["row_id"], text, list(ids), r["answer"], r.get("columns", {}))
            for r, text, ids in zip(rows, texts, encoded)]

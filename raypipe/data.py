"""Prompt sources, train/test splits and chat templating: everything before the first model call.

A source is a hub dataset name (`datasets.load_dataset`), a local .parquet/.jsonl/.csv file or folder of them, or
the built-in arithmetic generator (`builtin:arithmetic`, the default when no dataset is given). Every row keeps a
stable integer `row_id`: its index in its source (or the source's own integer id column, `--id-field`), so a rerun
(or a resume) sees the same ids.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raypipe.config import SourceConfig
from raypipe.errors import UserError
from raypipe.labels.references import FieldPath, Reference, check_path, display, read_reference
from raypipe.positions import row_offsets
from raypipe.prompt_template import PromptTemplate

BUILTIN_PREFIX = "builtin:"
LOCAL_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


@dataclass
class PromptRow:
    row_id: int
    prompt: str  # exactly the text given to the model (chat template applied, when asked)
    prompt_token_ids: list[int]
    answer: str | None = None  # the reference as the row gives it (references.display)
    columns: dict[str, float] = field(default_factory=dict)  # given label columns, carried into the shards
    offsets: list[int] | None = None  # this row's negative offset per feature position (markers vary by row)
    reference: str | None = None  # what samples are judged against: a Reference as JSON (references.py)


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

def split_config(spec: str) -> tuple[str, str | None]:
    """SOURCE#CONFIG -> (SOURCE, CONFIG): a dataset's config (`openai/gsm8k#main`, `mandarjoshi/trivia_qa#rc.nocontext`,
    `cais/mmlu#all`), what `datasets.load_dataset` takes as its second argument; (SOURCE, None) without one."""
    source, sep, config = spec.partition("#")
    if sep and (not source or not config.strip()):
        raise UserError(f"a source's config follows '#' (openai/gsm8k#main), got {spec!r}")
    return source, config.strip() if sep else None


def load_source(spec: str, split: str, builtin_size: int, seed: int):
    """Load one split of a dataset spec (SOURCE or SOURCE#CONFIG) as a `datasets.Dataset`; failures become one-line
    UserErrors.

    A local file is one split whatever the split name. A local folder is read as `datasets` reads it: its splits
    come from its file names (the hub's `data/train-00000-of-00001.parquet` layout, or `train.jsonl`, ...), or from
    a `save_to_disk` layout; a split it does not have is an error that lists the ones it has. A folder with configs
    (its README.md's `configs:`, as a hub dataset with configs is laid out) needs one named, and lists them.
    """
    import datasets

    spec, config = split_config(spec)
    if config is not None and (spec.startswith(("trigger:", BUILTIN_PREFIX)) or Path(spec).expanduser().is_file()):
        raise UserError(f"{spec} has no configs (a config follows '#' only for a hub dataset or a dataset folder)")

    if spec.startswith("trigger:"):  # the 2-D trigger task's generated rows and their no-trigger twins
        from raypipe.tasks.source import probe_source_rows

        return datasets.Dataset.from_list(probe_source_rows(spec, split, seed))
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        if name != "arithmetic":
            raise UserError(f"unknown built-in prompt source {spec!r}; known: builtin:arithmetic")
        return datasets.Dataset.from_list(arithmetic_problems(builtin_size, seed))

    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix not in LOCAL_FORMATS:
            raise UserError(f"cannot read {spec}: unsupported file type {path.suffix!r} (use .parquet, .jsonl, .csv)")
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


# --- splits --------------------------------------------------------------------------------------------------------

def split_ids(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A deterministic seeded split of ids 0..n-1 into (train, test), each in ascending order."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(n * test_fraction)) if n > 1 else 0
    return sorted(order[n_test:]), sorted(order[:n_test])


@dataclass
class Source:
    """One loaded dataset: an Arrow table of the columns a build reads (memory-mapped, not Python objects), and what
    those columns are."""

    spec: str
    table: Any  # pyarrow.Table, or an ObjectRef of one inside a Ray stage
    prompt: FieldPath | PromptTemplate  # the prompt column (or a field in one), or a template over columns
    answer: FieldPath | None  # the reference answers (references.py)
    label_columns: list[str]
    id_field: str | None
    features: Any = None  # datasets.Features: how to decode columns Arrow cannot type (mixed JSON values)
    classes: dict[str, list[str]] = field(default_factory=dict)  # categorical label column -> its class names
    options: FieldPath | None = None  # a multiple-choice row's options

    def column(self, part, name: str) -> list:
        values = part.column(name).to_pylist()
        return self.features.decode_column(values, name) if self.features is not None else values

    @property
    def answer_field(self) -> str | None:
        return None if self.answer is None else str(self.answer)

    @property
    def has_answers(self) -> bool:
        return self.answer is not None and self.table.column(self.answer.column).null_count < len(self.table)

    def answers(self, part) -> list:
        """Each row's answer value at the answer path (None without an answer column; _Unreadable where the path's
        field is missing)."""
        if self.answer is None:
            return [None] * len(part)
        return _field_values(self.column(part, self.answer.column), self.answer)

    def references(self, part, answers: list | None = None) -> list:
        """The Reference (references.py) of each row of a table slice, from its answers (read here unless given);
        None where a row has none."""
        answers = self.answers(part) if answers is None else answers
        options = _field_values(self.column(part, self.options.column), self.options) if self.options \
            else [None] * len(part)
        return [read_reference(value, choices) if not isinstance(value, _Unreadable) else
                Reference(error=value.reason) for value, choices in zip(answers, options)]


@dataclass
class SplitRows:
    """The rows of one split: which source, its row indices there (in order), and their row ids."""

    source: str  # key of the split's Source: "train", "test" for a separate test source, an evaluation split's name
    indices: list[int]
    row_ids: list[int]


# --- named evaluation splits ----------------------------------------------------------------------------------------

RESERVED_SPLITS = ("train", "test", "cv")  # names the outputs use for something else
SOURCE_PREFIXES = ("builtin", "trigger", "s3", "gs", "hf", "file", "http", "https")


@dataclass(frozen=True)
class EvalSplit:
    """A split beside train and test, from a source of its own: --eval-split NAME=SOURCE[:SPLIT]."""

    name: str
    spec: str
    split: str = "test"


def parse_eval_split(text: str) -> EvalSplit:
    """NAME=SOURCE[:SPLIT]. The last ':' starts the source's split name when what follows is a bare name (no '/')
    and what precedes is a source on its own, not a prefix such as builtin: or trigger:."""
    name, sep, rest = text.partition("=")
    name, rest = name.strip(), rest.strip()
    if not sep or not name or not rest:
        raise UserError(f"--eval-split takes NAME=SOURCE[:SPLIT] (e.g. ood=data/ood.jsonl), got {text!r}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name) or name in RESERVED_SPLITS:
        raise UserError(f"--eval-split name {name!r} must be a word (letters, digits, _ and -, a letter first) and "
                        f"not one of {', '.join(RESERVED_SPLITS)}")
    head, colon, tail = rest.rpartition(":")
    if colon and head and tail and "/" not in tail and "\\" not in tail and head not in SOURCE_PREFIXES:
        return EvalSplit(name, head, tail)
    return EvalSplit(name, rest)


def eval_splits(config: SourceConfig) -> list[EvalSplit]:
    """The evaluation splits of a build: those given, then, for a `trigger:` train source, one per generated test
    file (its in- and out-of-distribution sets, named as the file without `test_`: objects_ID, objects_OOD)."""
    given = [parse_eval_split(text) for text in config.eval_splits]
    automatic = []
    if (config.train_dataset or "").startswith("trigger:"):
        from raypipe.tasks.source import trigger_test_splits

        taken = {split.name for split in given}
        automatic = [EvalSplit(file.removeprefix("test_"), config.train_dataset, file)
                     for file in trigger_test_splits(config.train_dataset, config.seed)
                     if file.removeprefix("test_") not in taken]
    splits = given + automatic
    seen = set()
    for split in splits:
        if split.name in seen:
            raise UserError(f"--eval-split {split.name!r} is given twice")
        seen.add(split.name)
    return splits


def open_sources(config: SourceConfig) -> tuple[dict[str, Source], dict[str, SplitRows]]:
    """Load the sources and decide each split's rows, without reading a single prompt into Python: train and test
    (a separate source, or a seeded share of train), then each evaluation split, all of its own source's rows."""
    train_spec = config.train_dataset or f"{BUILTIN_PREFIX}arithmetic"

    def seed_of(spec: str, offset: int) -> int:
        """The built-in source generates other rows for each split (seed + offset); a trigger experiment is one
        generation, whose splits are picked by name: its seed is the build's for every split."""
        return config.seed if spec.startswith("trigger:") else config.seed + offset

    sources = {"train": _source(load_source(train_spec, config.train_split, config.builtin_size, config.seed),
                                train_spec, config)}
    if config.test_dataset is not None:
        sources["test"] = _source(load_source(config.test_dataset, config.test_split, config.builtin_size,
                                              seed_of(config.test_dataset, 1)), config.test_dataset, config)
        parts = {split: (split, list(range(len(sources[split].table)))) for split in ("train", "test")}
    else:
        train_ids, test_ids = split_ids(len(sources["train"].table), config.test_fraction, config.seed)
        parts = {"train": ("train", train_ids), "test": ("train", test_ids)}
    for offset, split in enumerate(eval_splits(config), start=2):
        sources[split.name] = _source(load_source(split.spec, split.split, config.builtin_size,
                                                  seed_of(split.spec, offset)), split.spec, config)
        parts[split.name] = (split.name, list(range(len(sources[split.name].table))))
    splits = {}
    for split, (key, indices) in parts.items():
        source = sources[key]
        ids = indices if source.id_field is None else \
            source.table.column(source.id_field).take(indices).to_pylist()
        splits[split] = SplitRows(key, indices, ids)
    classes = label_classes(sources.values())
    for source in sources.values():
        source.classes = classes
    return sources, splits


def label_classes(sources) -> dict[str, list[str]]:
    """Class names of each categorical (string) label column, sorted, over every source: train and test share one
    numbering, so class id i means the same class in every split."""
    import pyarrow.compute as pc
    import pyarrow.types as pat

    names: dict[str, set] = {}
    for source in sources:
        for column in source.label_columns:
            values = source.table.column(column)
            if pat.is_dictionary(values.type):
                values = values.cast(values.type.value_type)
            if pat.is_string(values.type) or pat.is_large_string(values.type):
                names.setdefault(column, set()).update(v for v in pc.unique(values).to_pylist() if v is not None)
    return {column: sorted(found) for column, found in names.items()}


def read_rows(source: Source, indices: list[int], row_ids: list[int]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The usable rows among these indices as {'row_id', 'question', 'answer', 'reference', 'columns'}; a missing,
    empty or non-string prompt (or a template field without a value) is skipped and counted by reason, never fails
    the build. 'answer' is the reference as the row gives it (a GSM8K solution whole), 'reference' what is judged."""
    import pyarrow as pa

    part = source.table.take(pa.array(indices, type=pa.int64()))
    if isinstance(source.prompt, PromptTemplate):
        values = {name: source.column(part, name) for name in source.prompt.columns}
        questions = [source.prompt.render({name: column[i] for name, column in values.items()})
                     for i in range(len(indices))]
        missing = "missing_template_value"
    else:
        questions = _field_values(source.column(part, source.prompt.column), source.prompt)
        missing = "missing_prompt"
    answers = source.answers(part)
    references = source.references(part, answers)
    columns = {name: source.column(part, name) for name in source.label_columns}
    rows, skipped = [], {}
    for i, (question, answer, reference, row_id) in enumerate(zip(questions, answers, references, row_ids)):
        reason = (missing if question is None or isinstance(question, _Unreadable)
                  else "non_string_prompt" if not isinstance(question, str)
                  else "empty_prompt" if not question.strip() else None)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        rows.append({"row_id": row_id, "question": question,
                     "answer": None if isinstance(answer, _Unreadable) else display(answer),
                     "reference": None if reference is None else reference.to_json(),
                     "columns": {name: _label_value(values[i], source.classes.get(name))
                                 for name, values in columns.items()}})
    return rows, skipped


class _Unreadable:
    """A row whose value has no field at a dotted path: the reason, for the row's count."""

    def __init__(self, reason: str):
        self.reason = reason


def _field_values(values: list, path: FieldPath) -> list:
    """Each row's value at a dotted path inside its column value; _Unreadable where the field is missing."""
    if not path.inner:
        return values
    out = []
    for value in values:
        try:
            out.append(path.get(value))
        except KeyError as exc:
            out.append(_Unreadable(f"no field {exc.args[0]}"))
    return out


def load_splits(config: SourceConfig) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, int]]]:
    """Every split's usable rows, read into Python at once (small sources, tests), and the rows skipped per split."""
    sources, splits = open_sources(config)
    rows, skipped = {}, {}
    for split, part in splits.items():
        rows[split], skipped[split] = read_rows(sources[part.source], part.indices, part.row_ids)
    return rows, skipped


def _label_value(value, classes: list[str] | None) -> float:
    """A given label as a float: numbers as they are, booleans as 0/1, a categorical value as its class id; a
    missing value is NaN, which probes count and skip."""
    if value is None:
        return float("nan")
    return float(classes.index(value)) if classes is not None else float(value)


def _source(dataset, spec: str, config: SourceConfig) -> Source:
    """Check a loaded dataset's columns, fields and ids before any work, and keep only the columns a build reads."""
    import numpy as np
    import pyarrow.types as pat

    names = dataset.column_names
    if config.prompt_template:
        prompt = PromptTemplate.parse(config.prompt_template, names, spec)
        for _, path in prompt.fields:
            check_path(path, dataset.features[path.column], spec, "--prompt-template field")
        prompt_columns = prompt.columns
    else:
        prompt = FieldPath.parse(config.prompt_field, names)
        if prompt.column not in names:
            raise UserError(f"prompt field {config.prompt_field!r} is not in {spec}; its columns are: "
                            f"{', '.join(names)}")
        check_path(prompt, dataset.features[prompt.column], spec, "prompt field")
        prompt_columns = [prompt.column]
    if config.id_field is not None and config.id_field not in names:
        raise UserError(f"id field {config.id_field!r} is not in {spec}; its columns are: {', '.join(names)}")
    answer_name = config.answer_field or ("answer" if "answer" in names else None)
    answer = options = None
    for kind, name in (("answer field", answer_name), ("options field", config.options_field)):
        if name is None:
            continue
        path = FieldPath.parse(name, names)
        if path.column not in names:
            raise UserError(f"{kind} {name!r} is not in {spec}; its columns are: {', '.join(names)}")
        check_path(path, dataset.features[path.column], spec, kind)
        answer, options = (path, options) if kind == "answer field" else (answer, path)
    if options is not None and answer is None:
        raise UserError(f"--options-field {config.options_field!r} needs --answer-field: {spec} has no 'answer' "
                        f"column naming the right option")
    for column in config.label_columns:
        if column not in names:
            raise UserError(f"label column {column!r} is not in {spec}; its columns are: {', '.join(names)}")
    if len(dataset) == 0:
        raise UserError(f"dataset {spec} is empty")
    columns = list(dict.fromkeys(c for c in (*prompt_columns, answer and answer.column, options and options.column,
                                             config.id_field, *config.label_columns) if c))
    if getattr(dataset, "_indices", None) is not None:  # a selected view: its rows in order, as a plain table
        dataset = dataset.flatten_indices()
    table = dataset.data.table.select(columns)
    if config.max_samples is not None:
        table = table.slice(0, min(config.max_samples, len(table)))
    for name in config.label_columns:
        kind = table.schema.field(name).type
        if pat.is_dictionary(kind):
            kind = kind.value_type
        if not (pat.is_integer(kind) or pat.is_floating(kind) or pat.is_boolean(kind) or pat.is_null(kind)
                or pat.is_string(kind) or pat.is_large_string(kind)):
            raise UserError(f"label column {name!r} of {spec} must hold numbers, booleans or class names (strings), "
                            f"got {kind}")
    if config.id_field is not None:
        kind = table.schema.field(config.id_field).type
        if not pat.is_integer(kind) or table.column(config.id_field).null_count:
            raise UserError(f"id field {config.id_field!r} of {spec} must hold integers")
        ids = table.column(config.id_field).to_numpy()
        values, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise UserError(f"id field {config.id_field!r} of {spec} has duplicate ids, e.g. "
                            f"{values[counts > 1][:5].tolist()}")
    features = dataset.features if any(type(dataset.features[c]).__name__ != "Value" for c in columns) else None
    return Source(spec, table, prompt, answer, list(config.label_columns), config.id_field, features,
                  options=options)


# --- templating and tokenization -----------------------------------------------------------------------------------

def to_prompt_rows(rows: list[dict[str, Any]], tokenizer, chat_template: bool,
                   template_args: dict[str, Any] | None = None) -> list[PromptRow]:
    """Apply the chat template (or not; with its switches, such as enable_thinking) and tokenize once: vLLM and
    Transformers both get these exact ids."""
    if not rows:
        return []
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("the model's tokenizer has no chat template; pass --no-chat-template for raw prompts")
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": r["question"]}],
                                          add_generation_prompt=True, tokenize=False, **(template_args or {}))
            for r in rows
        ]
    else:
        texts = [r["question"] for r in rows]
    # A templated prompt already holds its special tokens; a raw one gets the tokenizer's (e.g. BOS), as vLLM does.
    encoded = tokenizer(texts, add_special_tokens=not chat_template)["input_ids"]
    return [PromptRow(r["row_id"], text, list(ids), r["answer"], r.get("columns", {}), reference=r.get("reference"))
            for r, text, ids in zip(rows, texts, encoded)]


def usable_rows(prompts: list[PromptRow], config, positions: list[int | str], tokenizer):
    """Prompts the model can take; the others are skipped and counted by reason, never fail a shard.

    With --truncate-long-prompts a prompt over the context keeps its last max_model_len - 1 tokens instead (the end
    holds the chat template's assistant turn), and everything else about its row (id, answer, label columns); its
    stored text is those tokens decoded, and it is counted as `prompt_truncated`.
    """
    kept, skipped = [], {}
    limit = config.model.max_model_len - 1
    fixed = [p for p in positions if isinstance(p, int)]
    min_tokens = -min(fixed) if fixed else 1
    for row in prompts:
        reason = None
        if len(row.prompt_token_ids) > limit and config.source.truncate_long_prompts:
            ids = row.prompt_token_ids[-limit:]
            row = dataclasses.replace(row, prompt=tokenizer.decode(ids), prompt_token_ids=ids)
            skipped["prompt_truncated"] = skipped.get("prompt_truncated", 0) + 1
        if len(row.prompt_token_ids) > limit:
            reason = "prompt_too_long"
        elif len(row.prompt_token_ids) < min_tokens:
            reason = "prompt_shorter_than_positions"
        if not reason:
            row.offsets = row_offsets(positions, tokenizer, row.prompt, row.prompt_token_ids)
            if row.offsets is None:
                if config.features.missing_marker == "fail":
                    raise UserError(f"row {row.row_id}: its prompt does not contain the marker of --positions "
                                    f"({', '.join(p for p in positions if isinstance(p, str))}); "
                                    f"--missing-marker skip counts such rows instead")
                reason = "marker_absent"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            kept.append(row)
    return kept, skipped

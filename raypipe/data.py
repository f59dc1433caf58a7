"""Train/test and named evaluation splits over the loaded sources, rows read from them, and chat templating:
everything before the first model call that is not loading a source (raypipe.sources does that, per kind).

Every row keeps a stable integer `row_id`: its index in its source (or the source's own integer id column,
`--id-field`), so a rerun (or a resume) sees the same ids.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from typing import Any

from raypipe.config import SourceConfig
from raypipe.errors import UserError
from raypipe.labels.references import FieldPath, Reference, check_path, display, read_reference
from raypipe.positions import row_offsets
from raypipe.prompt_template import PromptTemplate
from raypipe.sources import DEFAULT_SPEC, PREFIXES, kind_of, load_split


@dataclass
class PromptRow:
    row_id: int
    prompt: str  # exactly the text given to the model (chat template applied, when asked)
    prompt_token_ids: list[int]
    answer: str | None = None  # the reference as the row gives it (references.display)
    columns: dict[str, float] = field(default_factory=dict)  # given label columns, carried into the shards
    offsets: list[int] | None = None  # this row's negative offset per feature position (markers vary by row)
    reference: str | None = None  # what samples are judged against: a Reference as JSON (references.py)


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
    if colon and head and tail and "/" not in tail and "\\" not in tail and head not in PREFIXES:
        return EvalSplit(name, head, tail)
    return EvalSplit(name, rest)


def eval_splits(config: SourceConfig) -> list[EvalSplit]:
    """The evaluation splits of a build: those given, then those its train source's kind offers (a `trigger:`
    source: one per generated test file, its in- and out-of-distribution sets) under a name not already given."""
    given = [parse_eval_split(text) for text in config.eval_splits]
    train_spec = config.train_dataset or DEFAULT_SPEC
    taken = {split.name for split in given}
    automatic = [EvalSplit(name, train_spec, split)
                 for name, split in kind_of(train_spec).offered_splits(train_spec, config.seed) if name not in taken]
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

    def load(spec: str, split: str, offset: int) -> Source:
        """The offset-th split (train 0, test 1, evaluation splits 2, ...) with the seed its source's kind gives it."""
        seed = kind_of(spec).split_seed(config.seed, offset)
        return _source(load_split(spec, split, config.builtin_size, seed), spec, config)

    sources = {"train": load(config.train_dataset or DEFAULT_SPEC, config.train_split, 0)}
    if config.test_dataset is not None:
        sources["test"] = load(config.test_dataset, config.test_split, 1)
        parts = {split: (split, list(range(len(sources[split].table)))) for split in ("train", "test")}
    else:
        train_ids, test_ids = split_ids(len(sources["train"].table), config.test_fraction, config.seed)
        parts = {"train": ("train", train_ids), "test": ("train", test_ids)}
    for offset, split in enumerate(eval_splits(config), start=2):
        sources[split.name] = load(split.spec, split.split, offset)
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

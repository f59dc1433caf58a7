"""Reference answers in the shapes public datasets publish them, read into one form the labels compare against.

A row's reference is one of
- a string: GSM8K's worked solution gives the value after its last `####`, a MATH solution its last `\\boxed{}`,
  anything else is the answer as written;
- a list of strings (TriviaQA's `answer.aliases`, SQuAD's `answers.text`, Natural Questions' `answer`): any of them
  is right;
- a number (an integer answer, an option's index);
- with an options column (multiple choice: MMLU's `choices`, ARC's `choices.text`), the right option: an integer is
  its 0-based index (MMLU), a letter its label (A = the first; ARC's `answerKey`), a digit string its 1-based label
  (ARC's numeric keys), any other string the option's own text.

Nested values are named by dotted path, as `datasets`' `flatten()` names them (`answer.aliases`, `answers.text`).
A value that cannot be read as a reference (a record without a field named, an empty list, an index past the
options) is never guessed: the row's `correct` is NaN and the reason is counted (`Reference.error`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from raypipe.errors import UserError
from raypipe.labels.answers import last_boxed

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_GSM8K = "####"


@dataclass(frozen=True)
class Reference:
    """What a row's samples are judged against: acceptable answers, or the right option of a multiple choice."""

    answers: tuple[str, ...] = ()
    options: tuple[str, ...] | None = None  # multiple choice: the options, in order
    choice: int | None = None  # multiple choice: the right option's index
    error: str | None = None  # why the row's value could not be read (its labels are NaN, counted)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in (("answers", list(self.answers)),
                                             ("options", None if self.options is None else list(self.options)),
                                             ("choice", self.choice), ("error", self.error)) if v not in (None, [])})

    @classmethod
    def from_json(cls, text: str | None) -> "Reference | None":
        if text is None:
            return None
        data = json.loads(text)
        options = data.get("options")
        return cls(tuple(data.get("answers", ())), None if options is None else tuple(options), data.get("choice"),
                   data.get("error"))

    @property
    def readable(self) -> bool:
        return self.error is None

    def describe(self) -> str:
        """The reference as a reader would write it: 'B) Paris', '72', 'Paris | Paris, France'."""
        if self.choice is not None and self.options is not None:
            return f"{LETTERS[self.choice]}) {self.options[self.choice]}"
        return " | ".join(self.answers)


@dataclass(frozen=True)
class FieldPath:
    """A column, or a field inside one by dotted path: 'answer.aliases' is field 'aliases' of column 'answer'."""

    column: str
    inner: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, path: str, columns: list[str]) -> "FieldPath":
        """The longest leading part of `path` that is a column (a flattened dataset may name 'answers.text' itself),
        and the fields below it; the column part alone when no prefix is a column (the caller reports it)."""
        parts = path.split(".")
        for cut in range(len(parts), 0, -1):
            if ".".join(parts[:cut]) in columns:
                return cls(".".join(parts[:cut]), tuple(parts[cut:]))
        return cls(parts[0], tuple(parts[1:]))

    def get(self, value: Any) -> Any:
        """The field's value inside one row's column value; lists of records give the list of their fields.
        KeyError names the missing field."""
        for name in self.inner:
            if isinstance(value, list):
                value = [item[name] if isinstance(item, dict) and name in item else _missing(name, item)
                         for item in value]
            elif isinstance(value, dict):
                value = value[name] if name in value else _missing(name, value)
            elif value is None:
                return None
            else:
                raise KeyError(f"{name!r} (the value is a {type(value).__name__}, not a record)")
        return value

    def __str__(self) -> str:
        return ".".join((self.column, *self.inner))


def _missing(name: str, record: Any):
    fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
    raise KeyError(f"{name!r} (its fields: {fields})")


def check_path(path: FieldPath, feature: Any, spec: str, what: str) -> None:
    """Before any work: the dotted fields exist in the column's type (`datasets` Features), and a record column is
    not taken whole. Errors name the field and what is there instead."""

    for name in path.inner:
        inner = feature.feature if hasattr(feature, "feature") and not isinstance(feature, dict) else feature
        if isinstance(inner, list) and inner:
            inner = inner[0]
        if isinstance(inner, dict):
            if name not in inner:
                raise UserError(f"{what} {str(path)!r}: {spec}'s {path.column!r} has no field {name!r}; its fields "
                                f"are: {', '.join(inner)}")
            feature = inner[name]
        else:
            raise UserError(f"{what} {str(path)!r}: {path.column!r} of {spec} is not a record, it has no field "
                            f"{name!r}")
    inner = feature.feature if hasattr(feature, "feature") and not isinstance(feature, dict) else feature
    if isinstance(feature, dict) or (isinstance(inner, dict) and not isinstance(feature, dict)):
        record = feature if isinstance(feature, dict) else inner
        raise UserError(f"{what} {str(path)!r} of {spec} is a record; name the field that holds the answer, e.g. "
                        f"{str(path)}.{next(iter(record))} (its fields: {', '.join(record)})")


def read_reference(value: Any, options: Any = None) -> Reference | None:
    """A row's reference from its answer value (and options column value); None when the row has none (a missing
    value); a Reference with `error` when the value cannot be read."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if options is not None:
        return _choice(value, options)
    if isinstance(value, bool):
        return Reference(error=f"a boolean ({value}) is not an answer")
    if isinstance(value, (int, float)):
        return Reference((_number_text(value),))
    if isinstance(value, str):
        answer = answer_text(value)
        return Reference((answer,)) if answer else Reference(error="an empty string")
    if isinstance(value, (list, tuple)):
        answers = [answer_text(item) if isinstance(item, str) else _number_text(item)
                   if isinstance(item, (int, float)) and not isinstance(item, bool) else None for item in value]
        if not value:
            return Reference(error="an empty list")
        if any(a is None for a in answers):
            kinds = sorted({type(item).__name__ for item in value if not isinstance(item, (str, int, float))})
            return Reference(error=f"a list holding {', '.join(kinds) or 'empty strings'}, not answers")
        present = tuple(dict.fromkeys(a for a in answers if a))
        return Reference(present) if present else Reference(error="a list of empty strings")
    if isinstance(value, dict):
        return Reference(error=f"a record (fields {', '.join(value)}); name one by dotted path")
    return Reference(error=f"a {type(value).__name__}, not an answer")


def answer_text(value: str) -> str:
    """The answer inside a reference string: after GSM8K's last '####', else the last \\boxed{}, else the string."""
    text = value.strip()
    if _GSM8K in text:
        return text.rsplit(_GSM8K, 1)[1].strip()
    return last_boxed(text) or text


def _number_text(value: int | float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _choice(value: Any, options: Any) -> Reference:
    if not isinstance(options, (list, tuple)) or not options or not all(isinstance(o, str) for o in options):
        shape = "an empty list or one of non-strings" if isinstance(options, (list, tuple)) else type(options).__name__
        return Reference(error=f"the options are {shape}, not a list of strings")
    options = tuple(options)
    if len(options) > len(LETTERS):
        return Reference(error=f"{len(options)} options: more than letters A-Z")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return Reference(error=f"a {type(value).__name__} is not an option's index, letter or text")
    if isinstance(value, int):
        index = value
    else:
        key = value.strip()
        if re.fullmatch(r"[A-Z]", key):
            index = LETTERS.index(key)
        elif re.fullmatch(r"\d+", key):
            index = int(key) - 1
        elif key in options:
            index = options.index(key)
        else:
            return Reference(error=f"{value!r} is neither a letter, a number nor one of the options")
    if not 0 <= index < len(options):
        return Reference(error=f"option {value!r} is past the {len(options)} options")
    return Reference((LETTERS[index], options[index]), options, index)


def display(value: Any) -> str | None:
    """The answer value as the rollout sidecar stores it: a string as written (a GSM8K solution whole), anything
    else as JSON."""
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)

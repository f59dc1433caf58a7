"""Prompts built from a row's columns (--prompt-template), so that multiple-choice and reading-comprehension datasets
need no preprocessing: '{context}\\n\\nQuestion: {question}', '{question}\\n{choices}'.

A field is a column or a dotted path inside one ('{answers.text}', '{choices.text}'); a list renders as lettered
lines ('A. Paris', 'B. London', ...), the letters the multiple-choice matcher reads back; '{{' and '}}' are braces.
A row missing a field's value is skipped and counted (`missing_template_value`), never given an empty gap.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from raypipe.errors import UserError
from raypipe.labels.references import LETTERS, FieldPath


@dataclass(frozen=True)
class PromptTemplate:
    text: str
    fields: tuple[tuple[str, FieldPath], ...]  # (the name as written, its path)

    @classmethod
    def parse(cls, text: str, columns: list[str], spec: str) -> "PromptTemplate":
        """The template and its fields, each checked against the source's columns (one line naming what is wrong)."""
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise UserError(f"--prompt-template {text!r}: {exc} (write '{{{{' and '}}}}' for braces)") from exc
        fields = []
        for _, name, spec_text, conversion in parts:
            if name is None:
                continue
            if not name or spec_text or conversion:
                raise UserError(f"--prompt-template fields are column names or dotted paths ('{{question}}', "
                                f"'{{answers.text}}'), got {{{name}{'!' + conversion if conversion else ''}"
                                f"{':' + spec_text if spec_text else ''}}}")
            path = FieldPath.parse(name, columns)
            if path.column not in columns:
                raise UserError(f"--prompt-template field {name!r} is not in {spec}; its columns are: "
                                f"{', '.join(columns)}")
            fields.append((name, path))
        if not fields:
            raise UserError(f"--prompt-template {text!r} names no column: write fields as '{{question}}'")
        return cls(text, tuple(dict.fromkeys(fields)))

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(path.column for _, path in self.fields))

    def render(self, values: dict[str, Any]) -> str | None:
        """The prompt from one row's column values; None when a field has no value."""
        rendered = {}
        for name, path in self.fields:
            try:
                value = path.get(values[path.column])
            except KeyError:
                return None
            text = render_value(value)
            if text is None:
                return None
            rendered[name] = text
        out = []
        for literal, name, _, _ in string.Formatter().parse(self.text):
            out.append(literal)
            if name is not None:
                out.append(rendered[name])
        return "".join(out)


def render_value(value: Any) -> str | None:
    """A field's value as prompt text: a list as lettered lines, a number or text as it is; None when missing."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if not value or len(value) > len(LETTERS) or any(item is None for item in value):
            return None
        return "\n".join(f"{LETTERS[i]}. {item}" for i, item in enumerate(value))
    if isinstance(value, dict):
        return None
    text = str(value)
    return text if text.strip() else None

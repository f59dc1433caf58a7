"""Final answers of generated samples, normalised so that equal answers compare equal (issue 5's correctness label).

The last `\\boxed{...}` wins (nested braces allowed); without one, the last number in the text. Normalisation
drops `$`, spaces, thousands separators, a trailing period and `\\text{}`/`\\left`/`\\right` wrappers, and turns
numbers into one canonical form, so "1,000", "1000.0" and "\\boxed{1000}" are the same answer.
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None when there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_brace = text.find("{", start)
    if open_brace < 0:
        return None
    depth = 0
    for i in range(open_brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_brace + 1:i]
    return None  # unbalanced: the sample was cut off inside the box


def extract_answer(text: str) -> str | None:
    """The sample's final answer: the last boxed expression, else the last number; None when neither exists."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: str | None) -> str | None:
    if answer is None:
        return None
    text = answer.strip()
    for wrapper in ("\\text", "\\mathrm", "\\textbf"):
        text = re.sub(re.escape(wrapper) + r"\{([^{}]*)\}", r"\1", text)
    text = text.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("$", "")
    text = text.replace(" ", "").rstrip(".").strip()
    fraction = re.fullmatch(r"\\d?frac\{(-?\d+)\}\{(-?\d+)\}", text)
    if fraction and int(fraction.group(2)) != 0:
        return _canonical_number(Fraction(int(fraction.group(1)), int(fraction.group(2))))
    numeric = text.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text) else text
    try:
        return _canonical_number(Fraction(numeric))
    except (ValueError, ZeroDivisionError):
        return text.lower() or None


def _canonical_number(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def final_answer_key(text: str) -> str | None:
    """The normalised final answer of a sample: what correctness and answer-equality clustering compare."""
    return normalize_answer(extract_answer(text))


def is_correct(text: str, reference: str | float | int | None) -> bool:
    """Whether a sample's extracted final answer equals the reference answer after normalisation."""
    if reference is None:
        return False
    predicted = final_answer_key(text)
    expected = normalize_answer(extract_answer(str(reference)) if last_boxed(str(reference)) else str(reference))
    return predicted is not None and predicted == expected

"""Whether a sample's final answer is right, for every kind of reference (see references.py) and --answer-match:

- `math`: math-verify's equivalence (answers.py), any of the references;
- `exact`: equal normalised strings;
- `f1`: short free-form answers, as the semantic-uncertainty code behind SEP judges them: SQuAD's normalisation
  (lower case, no punctuation, no articles) and the best token F1 over the references and the sample's answer
  spans, at least `f1_threshold` (0.5), unless each side holds a content word the other lacks (a substitution:
  "Luke Skywalker" for "Anakin Skywalker", "James II" for "James I" score 0.5 yet name someone else); a span that
  holds a reference whole, not as part of a longer name ("went to Sinclair Lewis", not "New York" for "York"), is
  right too. A prose reference under `math` (MATH's '\\text{Evelyn}') is judged this way;
- multiple choice (a row with options): the option the sample picks, by its letter ("B", "(B)", "B) Paris", "the
  answer is B") or by an option's text, must be the right one.

For a thinking model the answer is read from the text after its end-of-thinking marker (`answer_after`, such as
`</think>`) when the sample has one; a sample cut off at the token limit before it has no answer (it never stopped
thinking). The same matcher gives `correct`, `success_rate` and the answer-equality clusters of semantic entropy.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from raypipe.labels.answers import (
    _WRAPPER,
    _explicit_answer,
    _normalize_exact,
    answers_equal,
    final_answer,
    last_boxed,
    looks_mathematical,
    normalize_answer_key,
)
from raypipe.labels.references import LETTERS, Reference, read_reference

MATCHES = ("math", "exact", "f1")
F1_THRESHOLD = 0.5

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
# Words that do not tell two answers apart: "statue of the Virgin Mary" and "the Virgin Mary, in a statue" name one.
_FUNCTION_WORDS = {"a", "an", "the", "of", "in", "on", "at", "to", "for", "by", "with", "from", "and", "or", "as", "is",
                   "was", "are", "were", "be", "it", "its", "this", "that", "which", "who", "s"}
# Words before a name that do not make it a longer name: "King James I", "the Denver Broncos".
_TITLES = {"king", "queen", "president", "prince", "princess", "saint", "st", "sir", "lord", "lady", "dr", "mr", "mrs",
           "ms", "pope", "emperor", "general", "captain"}
# Where a sentence states its subject's value, for the spans of a free-form answer.
_COPULA = re.compile(r"\b(?:is|are|was|were|would\s+be|will\s+be|equals|called|named|has|have|had)\b",
                     re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:not|never|no|neither|nor)\b|n't", re.IGNORECASE)
_CHOICE = re.compile(r"^\s*(?:\*\*)?\s*(?:option|choice)?\s*[(\[]?\s*([A-Z])\s*[)\].:]?(?:\*\*)?(?=\s|$|[,;])",
                     re.IGNORECASE)


def answer_region(text: str, finish_reason: str | None, answer_after: str | None) -> str | None:
    """The part of a sample its final answer is read from: after the end-of-thinking marker when it has one; the
    whole text when there is no marker to look for or the sample stopped without one; None when it was cut off while
    still thinking."""
    if not answer_after:
        return text
    at = text.rfind(answer_after)
    if at >= 0:
        return text[at + len(answer_after):]
    return None if finish_reason == "length" else text


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, punctuation (any Unicode punctuation: '24–10' is '24-10') and
    articles removed, whitespace collapsed."""
    return " ".join(_words(text, lower=True))


def _words(text: str, lower: bool) -> list[str]:
    """The words of SQuAD's normalisation, in their case unless `lower`."""
    import unicodedata

    text = "".join(ch for ch in text if ch not in _PUNCTUATION and not unicodedata.category(ch).startswith("P"))
    return [word.lower() if lower else word for word in text.split() if word.lower() not in ("a", "an", "the")]


def free_form_match(span: str, truth: str, f1_threshold: float = F1_THRESHOLD) -> bool:
    """Whether a free-form answer span names the reference: token F1 at the threshold without a substitution, or the
    reference whole inside the span and not inside a longer name."""
    truth, span = _normalize_exact(truth), _unwrapped(span)  # '\\text{Evelyn}' is its text
    predicted, expected = squad_normalize(span).split(), squad_normalize(truth).split()
    if not predicted or not expected:
        return False
    content_missing = set(expected) - set(predicted) - _FUNCTION_WORDS
    content_extra = set(predicted) - set(expected) - _FUNCTION_WORDS
    if token_f1(span, truth) >= f1_threshold and not (content_missing and content_extra):
        return True
    return _holds_whole(_words(span, lower=False), expected)


def _unwrapped(span: str) -> str:
    """A span without the LaTeX around it ('\\text{Evelyn}', '$x$'), in its own case."""
    text = span.strip()
    while True:
        before = text
        for opening, closing in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if text.startswith(opening) and text.endswith(closing) and len(text) >= len(opening) + len(closing):
                text = text[len(opening):len(text) - len(closing)].strip()
        wrapped = _WRAPPER.fullmatch(text)
        text = wrapped.group(1).strip() if wrapped else text
        if text == before:
            return text


def _holds_whole(words: list[str], expected: list[str]) -> bool:
    """The reference's words appear in a row among the span's, with no capitalised word attached on either side
    that would make it part of a longer name (a title or the sentence's first word aside)."""
    lowered, n = [w.lower() for w in words], len(expected)
    for start in range(len(words) - n + 1):
        if lowered[start:start + n] != expected:
            continue
        before = words[start - 1] if start > 0 else ""
        after = words[start + n] if start + n < len(words) else ""
        extends_before = before[:1].isupper() and start > 1 and before.lower() not in _TITLES
        extends_after = after[:1].isupper() or after[:1].isdigit()
        if not extends_before and not extends_after:
            return True
    return False


def token_f1(prediction: str, truth: str) -> float:
    """SQuAD's token F1 between two answers after squad_normalize."""
    predicted, expected = squad_normalize(prediction).split(), squad_normalize(truth).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def free_form_spans(text: str, finish_reason: str | None) -> list[str]:
    """The candidate answers of a free-form sample: its boxed or explicitly stated answer when it has one ('the
    answer is X', 'Answer: X'); else its last sentence, and the parts of it before and after a copula ('Paris is the
    capital' -> 'Paris'; 'The capital is Paris' -> 'Paris'). Empty for a sample cut off without a committed answer."""
    boxed = last_boxed(text)
    if boxed is not None:
        return [boxed]
    if finish_reason == "length":
        return []
    lines = [line.strip() for line in text.splitlines() if line.strip().strip("`-*#= ")]
    if not lines:
        return []
    explicit = _explicit_answer("\n".join(lines[-3:]))
    if explicit is not None:
        return [explicit]
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", lines[-1]) if s.strip()]
    last = sentences[-1].strip().strip("*").strip() if sentences else lines[-1]
    spans = [last]
    copulas = list(_COPULA.finditer(last))
    if copulas:
        spans += [last[:copulas[0].start()], last[copulas[-1].end():]]
    return [span.strip(" .!*\"'") for span in spans if span.strip(" .!*\"'")]


def chosen_option(text: str, finish_reason: str | None, options: tuple[str, ...]) -> int | None:
    """The option a sample picks: the letter its final answer opens with ('B', '(B)', 'B) Paris', 'Option B'), the
    one option whose text its final answer (or last line) is, or else the one option whose text that states whole
    without a negation ('The floor supplies the upward force.'); None when it picks none or several, or gives a
    letter with another option's text."""
    letters = LETTERS[:len(options)]
    candidates = []
    boxed = last_boxed(text)
    if boxed is not None:
        candidates.append(boxed)
    elif finish_reason != "length":
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        explicit = _explicit_answer("\n".join(lines[-3:])) if lines else None
        candidates += [c for c in (explicit, lines[-1] if lines else None) if c]
    for candidate in candidates:
        letter = _CHOICE.match(candidate)
        if letter and letter.group(1).upper() in letters and _single_letter(candidate, letter):
            index = letters.index(letter.group(1).upper())
            # "B. <option D's text>": the letter and the text it gives pick different options, so it picks none
            stated = squad_normalize(candidate[letter.end():].strip(" —–-").rstrip("."))
            others = [i for i, option in enumerate(options) if i != index and squad_normalize(option) == stated]
            return None if stated and others and squad_normalize(options[index]) != stated else index
        named = [i for i, option in enumerate(options) if squad_normalize(option) and
                 squad_normalize(candidate.rstrip(".")) == squad_normalize(option)]
        if len(named) == 1:
            return named[0]
    for candidate in candidates:  # a sentence that states one option's text whole, and no other, picks it
        if _NEGATION.search(candidate):
            continue
        words = _words(candidate, lower=False)
        held = [i for i, option in enumerate(options) if squad_normalize(option) and
                _holds_whole(words, squad_normalize(option).split())]
        if len(held) == 1:
            return held[0]
    return None


def _single_letter(candidate: str, letter: re.Match) -> bool:
    """A lone letter is an option only when it is upper case or marked as one: 'a' in 'a dog' is an article."""
    marked = candidate.lstrip().startswith(("(", "[", "**")) or candidate[letter.end(1):letter.end(1) + 1] in ")].:"
    rest = candidate[letter.end():].strip()
    marked = marked or rest[:1] in ("—", "–", "-") and rest[1:2] == " "  # "D — an asteroid impact"
    return letter.group(1).isupper() and (marked or not rest or rest[0] in ",;") or marked


def judge(text: str, finish_reason: str | None, reference: Reference, match: str = "math",
          f1_threshold: float = F1_THRESHOLD, answer_after: str | None = None) -> tuple[bool, bool]:
    """(correct, answered): whether the sample's final answer matches the reference, and whether it has one."""
    region = answer_region(text, finish_reason, answer_after)
    if region is None:
        return False, False
    if reference.options is not None:
        picked = chosen_option(region, finish_reason, reference.options)
        return picked is not None and picked == reference.choice, picked is not None
    if match == "f1" or (match == "math" and not any(looks_mathematical(truth) for truth in reference.answers)):
        spans = free_form_spans(region, finish_reason)
        right = any(free_form_match(span, truth, f1_threshold) for span in spans for truth in reference.answers)
        return right, bool(spans)
    answer = final_answer(region, finish_reason)
    if answer is None:
        return False, False
    return any(answers_equal(answer, truth, match) for truth in reference.answers), True


def answer_key(text: str, finish_reason: str | None, match: str = "math", answer_after: str | None = None,
               options: tuple[str, ...] | None = None) -> str | None:
    """The key of a sample's answer for answer-equality clusters, as the matcher reads it: the picked option's
    letter, the SQuAD-normalised free-form answer, or final_answer_key; None without an answer."""
    region = answer_region(text, finish_reason, answer_after)
    if region is None:
        return None
    if options is not None:
        picked = chosen_option(region, finish_reason, options)
        return None if picked is None else LETTERS[picked]
    if match == "f1":
        spans = free_form_spans(region, finish_reason)
        return squad_normalize(spans[0]) if spans else None
    return normalize_answer_key(final_answer(region, finish_reason))


def answers_agree(a: str | None, b: str | None, match: str, f1_threshold: float = F1_THRESHOLD) -> bool:
    """Whether two answer keys mean the same answer: equal keys, or for f1 a token F1 of at least the threshold."""
    if a is None or b is None:
        return False
    return a == b or (match == "f1" and free_form_match(a, b, f1_threshold))


def is_correct(text: str, reference, finish_reason: str | None = None, match: str = "math") -> bool:
    """Whether a sample's final answer matches a reference value in any shape read_reference reads (a string, a
    GSM8K solution, a list of answers); False without an answer or a readable reference."""
    parsed = reference if isinstance(reference, Reference) else read_reference(reference)
    if parsed is None or not parsed.readable:
        return False
    return judge(text, finish_reason, parsed, match)[0]

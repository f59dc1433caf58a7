"""Final answers of generated samples and whether they are correct (issue 11's correctness label).

What counts as a sample's final answer, in order:
1. its last complete `\\boxed{...}` / `\\fbox{...}` (nested braces), anywhere in the text; a box cut off by the token
   limit does not count, an earlier closed one does;
2. nothing else when the sample was cut off at the token limit (`finish_reason == "length"`);
3. the last explicit answer statement in its last three non-empty lines: "the (final) answer is X", "final answer: X",
   "answer: X", GSM8K's "#### X";
4. its last sentence read as a statement: the value after the sentence's last "is / are / = / equals / gets / has ..."
   ("= 2*300 + 1 = 601" gives 601, "are 76 and 25" gives "76, 25"), leaving out values in conditions ("if there are
   3 boxes, ...", "when a = 2") and in a clause that qualifies the value (", which occurs when ...", " that ...", but
   ", which is 26" restates it); else the only number after "so / therefore / thus / hence ..." in it; else the
   sentence itself when it is nothing but a value ("12", "$\\frac12$"). A last sentence that points back or remarks
   ("This is the total number of shells.", "This is a classic example of ...") defers to the sentence before it;
5. else, when that last sentence is short (20 words at most), asks nothing, hedges nothing ("maybe", "I think",
   "about") and holds exactly one number, that number ("It takes 3 bolts of fiber in total.", "**540 meters**"; the
   number words zero to twenty count, as digits).
A number anywhere else in the text is never the answer, and a sample without a final answer is incorrect. The answer
is returned as written; `final_answer_key` normalises it for clustering.

`match="math"` compares answers with HF's math-verify (LaTeX and plain forms, fractions, intervals, sets, symbolic
equality), after a fast path for plain numbers; `match="exact"` compares normalised strings. math_verify and sympy
load lazily, on the first comparison that needs them.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from contextlib import contextmanager
from fractions import Fraction
from functools import lru_cache

MATCHES = ("math", "exact")
TIME_LIMIT_SECONDS = 2.0  # per math-verify parse or comparison, where a timer can be set (see _time_limit)
MAX_MATH_CHARS = 200  # longer expressions are compared as strings only (see _costly)
MAX_WORDS_ANSWER = 6  # "the answer is <words>" is an answer in words up to this many

# --- the final answer -----------------------------------------------------------------------------------------------

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_EXPLICIT = re.compile(r"\bthe\s+(?:final\s+)?answer\s+(?:is|would\s+be|will\s+be)\b\s*:?|"
                       r"\b(?:final\s+)?answer\s*(?:is\s*)?:|####", re.IGNORECASE)
_DELIMITERS = re.compile(r"\$\$|\$|\\\(|\\\)|\\\[|\\\]|\*\*")
# A sentence ends at '.', '!' or '?' (not '...', not 'n!' before an operator) followed by what can open one.
_SENTENCE_END = re.compile(r"(?<=(?<!\.)[.!?])\s+(?=[A-Z0-9\\$(\[*#\"'“])")
# Words after which a sentence states its value; '=' needs no word boundary.
_ANCHOR = re.compile(r"=|≈|\b(?:is|are|was|were|be|equals?|gets?|receives?|has|have|had|gives?|yields?|makes?|"
                     r"(?:simplifies|reduces|comes|amounts)\s+to)\b", re.IGNORECASE)
_FILLER = re.compile(r"\s*(?::|equal\s+to\b|exactly\b|simply\b|just\b|given\s+by\b|then\b)\s*", re.IGNORECASE)
# A clause after the stated value that qualifies it rather than states another: "..., which occurs when x = 1" (but
# "23 + 2, which is 26" states the value again, evaluated).
_QUALIFIER = re.compile(r",?\s+(?:which(?!\s+(?:is|equals|gives|makes|=))|that(?!\s+is\b|'s)|who|whose|when|where|"
                        r"since|because|as|if|for\s+all|such\s+that|so\s+that|with|satisfying|consisting)\b",
                        re.IGNORECASE)
# Values in a condition are not the answer: '=' after these words in its clause ("is achieved when a = b+2", "at
# x = -1"), any anchor in a clause that opens with one ("If there are 3 coins in each box, ...").
_CONDITION = re.compile(r"\b(?:when|whenever|where|if|at|for|with|provided|assuming|suppose|given|setting|letting|"
                        r"taking|substituting|plugging)\b", re.IGNORECASE)
# Where a conclusion begins: "So, ...", "..., so 29 coins are left", "Therefore ...".
_CONCLUSION = re.compile(r"(?:^|[,;:]\s*|\s)(?:so|therefore|thus|hence|in\s+conclusion|in\s+summary|overall|"
                         r"altogether|finally|consequently|in\s+total(?![\s.!]*$))\b(?!\s+that)", re.IGNORECASE)
# A sentence that points back at the one before ("This is the total number of shells.") or remarks on it.
_BACK_REFERENCE = re.compile(r"\s*(?:this|that|these|it|in\s+other\s+words)\b", re.IGNORECASE)
# A remark about the problem, not a statement of its answer: "This is a classic example of a simple equation: ...".
_REMARK = re.compile(r"\s*(?:this|that|it)\s+is\s+(?:a|an)\b[^.:]*\b(?:example|problem|case|puzzle|application)\b",
                     re.IGNORECASE)
# Plain words a value may contain ("sqrt(2)", "2048 mod 4"); any \command may appear too.
_MATH_WORDS = {"sqrt", "ln", "log", "exp", "sin", "cos", "tan", "mod", "pi", "choose", "max", "min", "infinity", "lim",
               "gcd", "lcm"}
_MATH_CHAR = re.compile(r"[0-9A-Za-z+\-*/^()\[\]{}.,=!|<>_\\'√π±∞·×÷−≤≥%\s]")
_NUMBER = re.compile(r"(?<![\w^_{}.\\])[-−]?\d+(?:,\d{3})*(?:\.\d+)?(?![\w^_{}]|[.,]\d)")


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} (or \\fbox{...}), braces balanced; None when there is none."""
    found = None
    for match in _BOX.finditer(text):
        depth = 0
        for i in range(match.end() - 1, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found = text[match.end():i].strip() or found
                break
    return found


def final_answer(text: str, finish_reason: str | None = None) -> str | None:
    """The sample's final answer as written (LaTeX or plain), or None; the rules are in the module docstring."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if finish_reason == "length":
        return None  # cut off mid-thought: what it said last is not a committed answer
    lines = [line.strip() for line in text.splitlines() if line.strip().strip("`-*#= ") or "####" in line]
    if not lines:
        return None
    explicit = _explicit_answer("\n".join(lines[-3:]))
    if explicit is not None:
        return explicit
    sentences = _sentences(lines[-1])
    last = _stated_value(sentences[-1]) if sentences else None
    if last is not None or not sentences:
        return last
    if not _BACK_REFERENCE.match(sentences[-1]):
        return _lone_number(sentences[-1])
    # The last sentence points back ("This is the total number of shells."): the value is in the one before; else
    # its own lone number ("It takes 3 bolts of fiber in total.": a dummy subject, not a pointer).
    earlier = sentences[:-1] or (_sentences(lines[-2]) if len(lines) > 1 else [])
    before = _stated_value(earlier[-1]) if earlier else None
    return before if before is not None else _lone_number(sentences[-1])


extract_answer = final_answer  # the name older callers use


def _explicit_answer(tail: str) -> str | None:
    """The value after the last 'the answer is' / 'final answer:' / 'answer:' / '####' of the tail, if it has one."""
    for marker in reversed(list(_EXPLICIT.finditer(tail))):
        statement = _DELIMITERS.sub(" ", _SENTENCE_END.split(tail[marker.end():].split("\n", 1)[0], 1)[0])
        value = _leading_value(statement) or _stated_value(statement)
        if value is None and 0 < len(statement.split()) <= MAX_WORDS_ANSWER:
            value = statement.strip().rstrip(".!").strip()  # an answer in words: "the answer is yes"
        if value:
            return value
    return None


_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")
_COUNTED = re.compile(r"(?<![\w.,^_(/*+=])(?:[-−]?\d+(?:,\d{3})*(?:\.\d+)?|" + "|".join(_NUMBER_WORDS) + r")(?![\w]|[.,]\d)",
                      re.IGNORECASE)
MAX_WORDS_LONE_NUMBER = 20
# A hedged number is not a committed answer: "no idea, maybe 12 apples", "I think about 12 things", "hmm 3".
_HEDGE = re.compile(r"\b(?:maybe|perhaps|probably|possibly|guess|think|about|around|roughly|approximately|hmm+|"
                    r"not\s+sure|no\s+idea|might|could)\b|,\s*maybe", re.IGNORECASE)


def _lone_number(sentence: str) -> str | None:
    """Rule 5: a short last sentence with one number and no stated value gives that number ("It takes 3 bolts of
    fiber in total.", "**540 meters**", "The graph has two vertical asymptotes."; number words up to twenty as
    digits); a sentence with two numbers, a condition or a question gives none."""
    plain = _DELIMITERS.sub(" ", sentence)
    if len(plain.split()) > MAX_WORDS_LONE_NUMBER or "?" in plain or _CONDITION.match(plain.lstrip()) or \
            _HEDGE.search(plain):
        return None
    numbers = _COUNTED.findall(plain)
    if len(numbers) != 1:
        return None
    number = numbers[0].replace("−", "-")
    return str(_NUMBER_WORDS.index(number.lower())) if number.lower() in _NUMBER_WORDS else number


def _sentences(line: str) -> list[str]:
    return [sentence for sentence in _SENTENCE_END.split(line) if sentence.strip()]


def _stated_value(sentence: str) -> str | None:
    """The value a sentence states (rule 4 of the module docstring), or None."""
    plain = _DELIMITERS.sub(" ", sentence)
    if _REMARK.match(plain):
        return None
    values: list[str] = []
    cut, covered = len(plain), 0
    for anchor in _ANCHOR.finditer(plain):
        if anchor.start() >= cut:
            break
        if anchor.start() < covered:
            continue  # inside the value just taken: "x = 2 and x = 3" is one answer
        clause = re.split(r"[,;:]", plain[:anchor.start()])[-1]
        if _CONDITION.search(clause) if anchor.group() == "=" else _CONDITION.match(clause.lstrip()):
            continue
        filler = _FILLER.match(plain, anchor.end())
        start = filler.end() if filler else anchor.end()
        value, rest = _leading_value_and_rest(plain[start:cut])
        if value is None or value in ("a", "A", "I"):  # an article or a pronoun, not a variable
            continue
        values.append(value)
        covered = cut - len(rest)
        if not values[:-1]:  # the first stated value fixes where a qualifying clause would begin
            qualifier = _QUALIFIER.search(plain, covered)
            cut = qualifier.start() if qualifier else cut
    if values:
        return values[-1]
    for conclusion in reversed(list(_CONCLUSION.finditer(plain))):  # no stated value: the conclusion's only number
        numbers = _NUMBER.findall(plain[conclusion.end():])
        if len(numbers) == 1:
            return numbers[0].replace("−", "-")
        if numbers:
            break
    value, rest = _leading_value_and_rest(plain)
    return value if value is not None and not rest.strip(" .!") else None


def _leading_value(text: str) -> str | None:
    return _leading_value_and_rest(text)[0]


def _leading_value_and_rest(text: str) -> tuple[str | None, str]:
    """(the value text opens with, the rest): "5 coins" -> "5", "n(n-3)/2 diagonals" -> "n(n-3)/2", "76 and 25" ->
    "76, 25", "2*300 + 1 = 601" -> "601"; (None, text) when text does not open with a value."""
    parts, rest = [], text
    while True:
        value, after = _math_prefix(rest)
        if value is None:
            break
        parts.append(value)
        rest = after
        joined = re.match(r"\s*,?\s*and\s+", rest)
        following, after = _math_prefix(rest[joined.end():]) if joined else (None, "")
        if following is None or not re.match(r"\s*(?:[.,;:!?)]|and\b|$)", after):
            break  # "76 and 25." is a list; "25, and 25 is the answer" is a new clause
        rest = rest[joined.end():]
    if not parts:
        return None, text
    value = ", ".join(parts).replace("−", "-")
    if "," not in value and "=" in value:  # "a = -5", "2*300 + 1 = 601": the end of the chain
        value = value.rsplit("=", 1)[1].strip() or value
    return value, rest


def _math_prefix(text: str) -> tuple[str | None, str]:
    """(the longest opening run of math characters whose words are math words, commands or single letters, the
    rest); (None, text) when it holds no letter or digit."""
    text = text.lstrip(" \t\"'“")
    opening_text = re.match(r"\\(?:text|textbf|mathrm)\s*\{[^{}]*\}", text)
    if opening_text:  # an answer in words: "\text{red}"
        return opening_text.group(), text[opening_text.end():]
    end = 0
    while end < len(text):
        word = re.match(r"\\?[A-Za-z]{2,}", text[end:])
        if word:
            if word.group() in ("\\text", "\\textbf", "\\mathrm") or not (
                    word.group().startswith("\\") or word.group().lower() in _MATH_WORDS
                    or _variables(text, end, end + word.end())):
                break  # prose, or a unit: "3 \text{ apples}"
            end += word.end()
        elif _MATH_CHAR.match(text[end]):
            end += 1
        else:
            break
    value = text[:end]
    while True:  # drop what a value cannot end with: punctuation, a dangling operator or opener, an unmatched ')'
        trimmed = re.sub(r"[\s.,;:]+$", "", value)
        if trimmed and trimmed[-1] in "([{=+-*/^\\_":
            trimmed = trimmed[:-1]
        elif trimmed.endswith(")") and trimmed.count(")") > trimmed.count("("):
            trimmed = trimmed[:-1]
        if trimmed == value:
            break
        value = trimmed
    if not re.search(r"[0-9A-Za-z√π∞]", value):
        return None, text
    return value.strip(), text[len(value):]


def _variables(text: str, start: int, end: int) -> bool:
    """Whether the short word text[start:end] is a product of variables ("2ab", "+ xy +") rather than prose: two or
    three letters, attached to a digit, operator or bracket, or between two operators."""
    if end - start > 3:
        return False
    before, after = text[:start], text[end:]
    if (before[-1:] and before[-1] in "0123456789+-*/^()[]{}=_,|") or (after[:1] and after[0] in "+-*/^()[]{}=_!|"):
        return True
    return before.rstrip()[-1:] in tuple("+-*/=(") and after.lstrip()[:1] in tuple("+-*/=)^")


# --- comparing answers ----------------------------------------------------------------------------------------------

_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|operatorname)\s*\{(.*)\}", re.DOTALL)
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_FRACTIONS = (re.compile(r"([-+]?)\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(-?\d+)\s*\}"),
              re.compile(r"([-+]?)(\d+)\s*/\s*(\d+)"), re.compile(r"([-+]?)\\[dt]?frac(\d)(\d)"))
_MATHEMATICAL = re.compile(r"[0-9\\^=<>{}\[\]()/+*√π∞]|^\s*-|^\s*[A-Za-z]\s*$|"
                           r"(?<![A-Za-z])[A-Za-z]\s*-\s*[A-Za-z](?![A-Za-z])")  # 'p - q', not 'well-known'


def normalize_answer(answer: str | None) -> str | None:
    """An answer's normalised string: one canonical form for plain numbers ('1,000', '1000.0' -> '1000'; '0.5',
    '\\frac12' -> '1/2'), else the exact-match normalisation; None stays None."""
    if answer is None:
        return None
    number = _as_number(answer)
    return _canonical(number) if number is not None else _normalize_exact(answer)


def _normalize_exact(answer: str) -> str:
    """Exact match's normal form: stripped, casefolded, without surrounding $ / \\( \\) / \\text{} or a trailing
    period, inner runs of spaces as one."""
    text = answer
    while True:
        before = text
        text = text.strip().rstrip(".").strip()
        for opening, closing in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if text.startswith(opening) and text.endswith(closing) and len(text) >= len(opening) + len(closing):
                text = text[len(opening):len(text) - len(closing)]
        wrapped = _WRAPPER.fullmatch(text)
        text = wrapped.group(1) if wrapped else text
        if text == before:
            return re.sub(r"\s+", " ", text).casefold()


def _as_number(answer: str) -> Fraction | None:
    """The answer as an exact number when it is a plain one (integer, decimal, a/b, \\frac{a}{b}), else None."""
    text = _normalize_exact(answer).replace("−", "-").replace("\\!", "").replace("{,}", ",")
    if _PLAIN_NUMBER.fullmatch(text):
        return Fraction(text.replace(",", ""))
    for pattern in _FRACTIONS:
        fraction = pattern.fullmatch(text)
        if fraction and int(fraction.group(3)) != 0:
            value = Fraction(int(fraction.group(2)), int(fraction.group(3)))
            return -value if fraction.group(1) == "-" else value
    return None


def _canonical(number: Fraction) -> str:
    return str(number.numerator) if number.denominator == 1 else f"{number.numerator}/{number.denominator}"


def _reference_answer(reference) -> str | None:
    """A reference answer as a string, the content of its box when it is boxed; None when the row has none.
    (references.py reads references in every shape: GSM8K solutions, lists, multiple choice.)"""
    if reference is None or (isinstance(reference, float) and reference != reference):
        return None
    text = str(reference).strip()
    return (last_boxed(text) or text) or None


def looks_mathematical(answer: str) -> bool:
    """Whether an answer reads as mathematics (digits, LaTeX, operators, brackets, a lone variable), not prose."""
    return bool(_MATHEMATICAL.search(_normalize_exact(answer)))


def answer_match_default(references: list[str | None]) -> str:
    """'math' when at least half of the present references look mathematical (numbers, LaTeX, fractions ...), else
    'f1' (short free-form answers: SQuAD's token F1); 'math' when there are none."""
    present = [text for text in (_reference_answer(reference) for reference in references) if text is not None]
    mathematical = sum(looks_mathematical(text) for text in present)
    return "math" if 2 * mathematical >= len(present) else "f1"


def answers_equal(answer: str, reference: str, match: str = "math") -> bool:
    """Whether an answer equals a reference answer: equal normalised strings, or for 'math' also equal numbers or
    math-verify's equivalence (only when the reference reads as mathematics)."""
    if match not in MATCHES:
        raise ValueError(f"match must be one of {MATCHES}, not {match!r}")
    if _normalize_exact(answer) == _normalize_exact(reference):
        return True
    if match == "exact" or not looks_mathematical(reference):
        return False  # prose: math-verify would read 'listen' and 'silent' as the same product of symbols
    expected, given = _as_number(reference), _as_number(answer)
    if expected is not None and given is not None:
        return expected == given
    if _costly(answer) or _costly(reference):
        return False
    gold, predicted = _parsed(reference), _parsed(answer)
    if not gold or not predicted:
        return False
    if _bounded(_numerically_different, gold[0], predicted[0], default=False):
        return False  # most wrong answers end here, without sympy's simplify
    return bool(_bounded(_math_verify().verify, gold, predicted, timeout_seconds=None, default=False))


def final_answer_key(text: str, finish_reason: str | None = None) -> str | None:
    """A key of the sample's final answer for answer-equality clustering (semantic entropy): plain numbers in one
    canonical form, other math the string of its math-verify parse (sympy orders terms, so 'x+1' and '1+x' agree),
    else the normalised string; None when the sample has no final answer."""
    return normalize_answer_key(final_answer(text, finish_reason))


def normalize_answer_key(answer: str | None) -> str | None:
    """final_answer_key for an answer already extracted."""
    if answer is None:
        return None
    number = _as_number(answer)
    if number is not None:
        return _canonical(number)
    if looks_mathematical(answer) and not _costly(answer):
        parsed = _parsed(answer)
        if parsed and not isinstance(parsed[0], str):
            return str(parsed[0])
    return _normalize_exact(answer)


_PROBES = (0.5377, 1.8339, 2.2588)  # where two expressions are compared numerically: arbitrary, positive, not round


def _numerically_different(gold, predicted) -> bool:
    """Whether two parsed expressions evaluate to clearly different numbers with every free symbol set to each probe
    value: a cheap proof of inequality that spares sympy's simplify. False when it cannot tell (sets, relations,
    non-finite values), which leaves the decision to math-verify."""
    import sympy

    if not (isinstance(gold, sympy.Expr) and isinstance(predicted, sympy.Expr)):
        return False
    symbols = sorted(gold.free_symbols | predicted.free_symbols, key=str)
    for probe in _PROBES if symbols else _PROBES[:1]:
        values = {symbol: sympy.Float(probe + 0.1 * i) for i, symbol in enumerate(symbols)}
        try:
            a, b = complex(gold.evalf(15, subs=values)), complex(predicted.evalf(15, subs=values))
        except (TypeError, ValueError, ArithmeticError):
            return False
        if not abs(a) < float("inf") > abs(b):
            return False  # nan or infinite: no proof either way
        if abs(a - b) > 1e-5 * max(1.0, abs(a), abs(b)):
            return True
    return False


# --- bounding sympy's time ------------------------------------------------------------------------------------------

class _TimeUp(BaseException):
    """Raised by the timer; a BaseException so that no `except Exception` on the way swallows it."""


def _costly(expression: str) -> bool:
    """Whether sympy could spend unbounded time on an expression inside C code, where no timer interrupts it: long
    expressions, power towers, huge exponents or factorials."""
    if len(expression) > MAX_MATH_CHARS or re.search(r"\d{4,}\s*!", expression):
        return True
    for power in re.finditer(r"\^\s*(?:([{(])|([\w.]+))", expression):
        if power.group(1):  # a bracketed exponent: up to its closing bracket
            close, depth, end = {"{": "}", "(": ")"}[power.group(1)], 0, len(expression)
            for i in range(power.start(1), len(expression)):
                depth += (expression[i] == power.group(1)) - (expression[i] == close)
                if depth == 0:
                    end = i + 1
                    break
            exponent = expression[power.start(1):end]
        else:
            exponent, end = power.group(2), power.end(2)
        if "^" in exponent or expression[end:].lstrip().startswith("^") or len(re.sub(r"\D", "", exponent)) > 4:
            return True  # a power tower, or an exponent beyond 9999
    return False


def _bounded(function, *args, default, **kwargs):
    """function(*args, **kwargs), or default when it runs past TIME_LIMIT_SECONDS."""
    try:
        with _time_limit(TIME_LIMIT_SECONDS):
            return function(*args, **kwargs)
    except _TimeUp:
        return default


@contextmanager
def _time_limit(seconds: float):
    """Raise _TimeUp in the block after `seconds`, by SIGALRM (math-verify's own timeout works the same way, in whole
    seconds). Signals only reach the main thread, so elsewhere the block runs unbounded and _costly is the guard. A
    timer already set, such as pytest-timeout's, is set again afterwards."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    active = [True]

    def expire(signum, frame):
        if active[0]:
            raise _TimeUp()

    previous_handler = signal.signal(signal.SIGALRM, expire)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        try:
            active[0] = False  # from here on a late alarm is ignored
        finally:  # and this runs even when the alarm raised just above
            signal.setitimer(signal.ITIMER_REAL, 0)
            # None: a handler set outside Python, which cannot be put back; the default is the nearest.
            signal.signal(signal.SIGALRM, signal.SIG_DFL if previous_handler is None else previous_handler)
            if previous_delay:
                remaining = max(previous_delay - (time.monotonic() - started), 1e-3)
                signal.setitimer(signal.ITIMER_REAL, remaining, previous_interval)


def _parsed(answer: str) -> list:
    """math-verify's parse of one answer ([] when it does not parse or takes too long)."""
    _math_verify()  # loading and warming up take longer than the time limit, once
    return _bounded(_parse, answer, default=[])


@lru_cache(maxsize=4096)
def _parse(answer: str) -> list:
    """The answer read as LaTeX math, which also takes plain forms such as 'sqrt(2)/2' and '2^(n-1)'."""
    math_verify = _math_verify()
    # A root written with the symbol ('3√13', '√(x+1)'): LaTeX's \\sqrt, which math-verify reads.
    text = re.sub(r"√\s*(\d+(?:\.\d+)?|[A-Za-z]|\([^()]*\)|\{[^{}]*\})",
                  lambda root: "\\sqrt{" + root.group(1).strip("(){}") + "}", answer.strip())
    return math_verify.parse(text if text.startswith("$") else f"${text}$",
                             extraction_config=[math_verify.LatexExtractionConfig()], parsing_timeout=None)


@lru_cache(maxsize=1)
def _math_verify():
    """The math_verify module, imported and warmed up (its LaTeX parser builds itself on first use)."""
    import math_verify
    import math_verify.grader
    import math_verify.parser

    # Our own timer bounds the work (math-verify's needs the main thread and whole seconds), so math-verify need
    # not warn that its own timeout is off.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    warm = math_verify.parse("$\\frac{x^2+1}{2}$", extraction_config=[math_verify.LatexExtractionConfig()],
                             parsing_timeout=None)
    math_verify.verify(warm, warm, timeout_seconds=None)
    return math_verify

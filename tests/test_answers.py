"""Final answers, correctness and semantic-entropy clustering (issue 11's labeler, issue 5's clustering helpers).

The labeler is held to hand judgements of real outputs in tests/fixtures/answers.jsonl (see make_answers_fixture.py
there for how they were produced); the unit tests below pin its rules one by one.
"""

import json
import math
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from raypipe.labels.answers import (
    answer_match_default,
    answers_equal,
    extract_answer,
    final_answer,
    final_answer_key,
    last_boxed,
    normalize_answer,
)
from raypipe.labels.matching import is_correct
from raypipe.labels.semantic import answer_clusters, best_split_threshold, cluster_entropy, greedy_clusters

FIXTURE = Path(__file__).parent / "fixtures" / "answers.jsonl"
JUDGEMENTS = ("correct", "incorrect", "no_answer")


def _fixture() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


# --- the hand-checked fixture ---------------------------------------------------------------------------------------

def test_fixture_is_hand_judged_real_outputs_from_three_sources():
    rows = _fixture()
    assert len(rows) >= 150 and len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        assert {"id", "source", "prompt", "reference", "text", "finish_reason", "judgement", "why"} <= row.keys()
        assert row["judgement"] in JUDGEMENTS and row["why"].strip()
    sources = Counter(row["source"].split(":")[0] for row in rows)
    assert sources["arithmetic"] >= 40 and sources["champ-embedded"] >= 40 and sources["champ-shipped"] >= 40
    judged = Counter(row["judgement"] for row in rows)
    assert judged["correct"] >= 40 and judged["incorrect"] and judged["no_answer"]
    assert any(row["finish_reason"] == "length" for row in rows)


def test_labeler_agrees_with_the_hand_judgements():
    """Precision and recall of `correct` (incorrect and no_answer are both negatives)."""
    rows = _fixture()
    predicted = {row["id"]: is_correct(row["text"], row["reference"], row["finish_reason"]) for row in rows}
    positives = {row["id"] for row in rows if row["judgement"] == "correct"}
    true_positives = sum(predicted[i] for i in positives)
    claimed = sum(predicted.values())
    false_positives = [i for i, p in predicted.items() if p and i not in positives]
    missed = [i for i in positives if not predicted[i]]
    assert true_positives / claimed >= 0.98, f"labelled correct but judged otherwise: {false_positives}"
    assert true_positives / len(positives) >= 0.95, f"judged correct but not labelled so: {missed}"


# --- what counts as the final answer --------------------------------------------------------------------------------

def test_last_boxed_balances_nested_braces_and_skips_a_box_left_open():
    assert last_boxed("first \\boxed{1} then \\boxed{\\frac{3}{4}}") == "\\frac{3}{4}"
    assert last_boxed("so \\boxed{\\sqrt{x^{2}}} end") == "\\sqrt{x^{2}}"
    assert last_boxed("we get \\boxed{5}. Checking: \\boxed{\\frac{1}{") == "5"  # the cut-off box does not count
    assert last_boxed("x = 3") is None and last_boxed("\\boxed{}") is None


def test_a_sample_cut_off_at_the_token_limit_has_only_what_it_boxed():
    text = "Adding them up, the answer is 42. Let me double-check by counting again: 40, 41, 42, and the"
    assert final_answer(text, "stop") == "42"
    assert final_answer(text, "length") is None
    assert not is_correct(text, "42", "length")
    assert final_answer("so the total is \\boxed{42}. Now let us verify that", "length") == "42"


@pytest.mark.parametrize("text, expected", [
    ("Adding 3 and 4 gives 7.\nThe answer is 7.", "7"),
    ("So the final answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("Final answer: 12", "12"),
    ("Working: 48 / 2 = 24.\n#### 24", "24"),
    ("She pays 3 * 4 = 12 dollars, so the change is 20 - 12 = 8", "8"),  # a final '= N'
    ("Therefore, x = 5.", "5"),
    ("So, each friend gets 24 stamps.", "24"),  # the value after 'gets'
    ("So, Gia fills 30 pencils in total.", "30"),  # a conclusion's only number
    ("Milo gave 29 to Ava, so 29 coins are left.", "29"),
    ("Therefore, there are 239 such strings of length 6.", "239"),  # after 'are', not the later 6
    ("Thus the minimum is 1-1=0, which is attained when x_1=...=x_n=1/n.", "0"),  # not the qualifying clause
    ("So the value is \\( 7744 \\), which is \\( 88^2 \\).", "88^2"),  # 'which is' restates the value
    ("the total is 23 + 2, which is 26 coins.", "26"),
    ("The numbers are 76 and 25.", "76, 25"),
    ("Hugo has 9 + 7 = 16 apples.\n\nThis is a classic example of a simple equation.", "16"),  # a closing remark
    ("the remainder is:\n\\[ r(x) = -2x + 2 \\]", "-2x + 2"),
    ("12", "12"),
    ("$\\frac12$", "\\frac12"),
])
def test_explicit_answers_at_the_end(text, expected):
    assert final_answer(text) == expected


@pytest.mark.parametrize("text", [
    "Let a+b+c=3. We need the minimum of (a+b+c)^2.",  # numbers mid-text, but no answer
    "Tom has 3 apples and buys 4 more. How many does he have?",
    "This is the final answer.",
    "I do not know",
    "",
])
def test_no_final_answer(text):
    assert final_answer(text) is None


def test_a_number_mid_text_is_not_an_answer_even_when_it_equals_the_reference():
    text = "Since a+b+c = 2, we consider (a+b+c)^2. We need to minimise it over the simplex."
    assert not is_correct(text, "2")
    assert not is_correct("First 12 - 4 = 8. Gia must have left 12 cookies remaining.", "8")  # final answer is 12
    assert not is_correct("\\boxed{5}", None)


def test_the_last_answer_statement_wins():
    assert final_answer("Ava has 45 stickers left.\n#### 4\nThe answer is: 4") == "4"
    assert final_answer("So, each friend gets 13 cards. Actually each friend gets 9 cards.") == "9"


# --- what counts as correct -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, reference", [
    ("\\frac{1}{2}", "0.5"), ("1/2", "\\dfrac12"), ("-\\frac{1}{2}", "-1/2"), ("1,000", "1000"), ("1000.0", "1000"),
    ("\\frac{\\sqrt{3}}{3}", "1/sqrt(3)"), ("2^{n-1}", "2^(n-1)"), ("\\frac{n(n-3)}{2}", "n(n-3)/2"),
    ("x^4+x^2+1", "(x^2+x+1)(x^2-x+1)"), ("(x+1)^2", "x^2+2x+1"), ("\\left(1, 3\\right]", "(1, 3]"),
    ("[-1,1]", "[-1, 1]"), ("\\{9, 4, 1\\}", "1, 4, 9"), ("a = -5", "-5"), ("88^2", "7744"),
    ("$\\boxed{7}$", "\\boxed{7}"),
])
def test_equal_answers_in_different_forms(answer, reference):
    assert answers_equal(last_boxed(answer) or answer, last_boxed(reference) or reference)


@pytest.mark.parametrize("answer, reference", [
    ("(1, 3)", "(1, 3]"), ("\\{1, 4\\}", "1, 4, 9"), ("-120", "120"), ("9", "-9"), ("x", "-2x+2"),
    ("76, 25", "76"), ("\\sqrt{2}", "1/sqrt(3)"), ("2^{n}", "2^(n-1)"),
])
def test_different_answers(answer, reference):
    assert not answers_equal(answer, reference)


def test_is_correct_reads_boxed_or_plain_references():
    assert is_correct("... so the answer is \\boxed{15}", "15")
    assert is_correct("She ends with 15 marbles, so the answer is 15.", 15)
    assert is_correct("The answer: 2,000", "\\boxed{2000}")
    assert not is_correct("\\boxed{14}", "15")
    assert not is_correct("I do not know", "15")


def test_exact_match_compares_normalised_strings():
    assert answers_equal("\\text{Paris}.", " paris ", match="exact")
    assert answers_equal("$red$", "Red", match="exact")
    assert not answers_equal("1,000", "1000", match="exact")
    assert answers_equal("1,000", "1000", match="math")
    assert is_correct("The capital is Paris.\nThe answer is \\text{Paris}.", "paris", match="exact")
    with pytest.raises(ValueError):
        answers_equal("1", "1", match="fuzzy")


def test_prose_references_are_never_compared_as_algebra():
    assert not answers_equal("silent", "listen")  # as symbols both would be the product e*i*l*n*s*t
    assert answers_equal("Listen", "listen")


def test_answer_match_default():
    assert answer_match_default(["2", "\\frac{1}{2}", "(1, 3]", None]) == "math"
    assert answer_match_default(["red", "Paris", "blue whale", "7"]) == "f1"  # prose: short free-form answers
    assert answer_match_default(["x^2+1", "n", "yes"]) == "math"
    assert answer_match_default([None]) == "math"


def test_answer_keys_agree_for_equal_answers():
    assert final_answer_key("so \\boxed{\\frac12}") == final_answer_key("The answer is 0.5") == "1/2"
    assert final_answer_key("Therefore, x = 1 + y.") == final_answer_key("the answer is y+1")
    assert final_answer_key("The total is 1,000.") == final_answer_key("#### 1000")
    assert final_answer_key("no answer here") is None
    assert final_answer_key("so it is \\boxed{3}. Then", "length") == "3"
    assert final_answer_key("and so the total is 3", "length") is None
    assert normalize_answer("12.0") == normalize_answer("12") == "12" and extract_answer("it is 12.") == "12"


def test_labeling_works_off_the_main_thread():
    """math-verify's own timeouts use signals, which raise off the main thread; this labeler must not."""
    results, errors = [], []

    def label():
        try:
            results.append([is_correct("so it is \\boxed{\\frac{\\sqrt{3}}{3}}", "1/sqrt(3)"),
                            is_correct("The answer is x^4+x^2+1.", "(x^2+x+1)(x^2-x+1)"),
                            final_answer_key("The answer is (x+1)^2")])
        except BaseException as error:  # noqa: BLE001 - any error at all fails the test
            errors.append(error)

    worker = threading.Thread(target=label)
    worker.start()
    worker.join(60)
    assert not errors and results and results[0][:2] == [True, True]


def test_expressions_that_could_hang_sympy_are_refused_quickly():
    start = time.perf_counter()
    assert not answers_equal("9^{9^{9^{9}}}", "7")
    assert not answers_equal("2^{10^{100}}", "2^{10^{100}}+1")
    assert not answers_equal("100000000!", "1")
    assert time.perf_counter() - start < 5


def test_a_timer_already_set_is_set_again_after_a_comparison():
    """The time limit borrows SIGALRM; a timer set before (pytest-timeout's, say) must keep running afterwards."""
    handler = lambda signum, frame: None  # noqa: E731
    previous_handler = signal.signal(signal.SIGALRM, handler)
    previous_timer = signal.setitimer(signal.ITIMER_REAL, 300)
    try:
        assert answers_equal("x^4+x^2+1", "(x^2+x+1)(x^2-x+1)")
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 250 < remaining <= 300 and signal.getsignal(signal.SIGALRM) is handler
    finally:
        signal.setitimer(signal.ITIMER_REAL, *previous_timer)
        signal.signal(signal.SIGALRM, previous_handler)


def test_math_libraries_load_only_when_a_comparison_needs_them():
    code = ("import sys; from raypipe.labels.answers import final_answer_key; "
            "from raypipe.labels.matching import is_correct; "
            "assert is_correct('#### 1,000', '1000') and final_answer_key('The answer is 0.5') == '1/2'; "
            "print(sorted(m for m in ('sympy', 'math_verify') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


# --- clustering by answers and semantic entropy (raypipe/labels/semantic.py) ----------------------------------------

def test_clusters_and_entropy():
    assert answer_clusters(["7", "7", "7", "7"]) == [0, 0, 0, 0]
    assert cluster_entropy([0, 0, 0, 0]) == 0.0  # a single cluster
    assert answer_clusters(["1", "2", "3", "4"]) == [0, 1, 2, 3]
    assert cluster_entropy([0, 1, 2, 3]) == pytest.approx(math.log(4))
    # ties: two clusters of two are maximally uncertain between two meanings
    assert cluster_entropy(answer_clusters(["5", "6", "5", "6"])) == pytest.approx(math.log(2))
    # a sample without an answer never joins another
    assert answer_clusters([None, None, "3"]) == [0, 1, 2]
    # greedy: a sample joins the first cluster whose representative it matches
    assert greedy_clusters([1, 4, 2, 5], lambda a, b: abs(a - b) <= 1) == [0, 1, 0, 1]


def test_samples_with_equal_answers_share_a_cluster():
    texts = ["so \\boxed{\\frac{1}{2}}", "The answer is 0.5", "#### 1/2", "I am not sure", "The answer is 2."]
    assert answer_clusters([final_answer_key(text) for text in texts]) == [0, 0, 0, 1, 2]


def test_best_split_threshold_separates_two_groups():
    assert 0.2 < best_split_threshold([0.0, 0.1, 0.0, 1.3, 1.4, 1.2]) < 1.2
    assert best_split_threshold([0.5, 0.5]) == 0.5

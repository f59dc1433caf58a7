"""Answer extraction, correctness and semantic-entropy clustering on hand-made cases (issue 5's label functions)."""

import math

import pytest

from raypipe.labels.answers import extract_answer, is_correct, last_boxed, normalize_answer
from raypipe.labels.semantic import answer_clusters, best_split_threshold, cluster_entropy, greedy_clusters


@pytest.mark.parametrize("text, expected", [
    ("so the answer is \\boxed{42}.", "42"),
    ("first \\boxed{1} then \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
    ("nested \\boxed{\\sqrt{x^{2}}} end", "\\sqrt{x^{2}}"),
    ("Tom has 3 apples, buys 4, so 7 apples.", "7"),
    ("the total is 1,250.", "1,250"),
    ("no answer here", None),
    ("cut off \\boxed{12", "12"),  # an unbalanced box falls back to the last number
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_none_without_box():
    assert last_boxed("x = 3") is None


@pytest.mark.parametrize("a, b", [("1,000", "1000"), ("1000.0", "1000"), ("$7$", "7"), ("\\frac{1}{2}", "0.5"),
                                  ("\\text{Paris}", "paris"), ("12.", "12")])
def test_normalize_makes_equal_answers_equal(a, b):
    assert normalize_answer(a) == normalize_answer(b)


def test_is_correct_with_and_without_boxes():
    assert is_correct("... so \\boxed{15}", "15")
    assert is_correct("She ends with 15 marbles.", 15)
    assert is_correct("The answer: 2,000", "\\boxed{2000}")
    assert not is_correct("\\boxed{14}", "15")
    assert not is_correct("I do not know", "15")
    assert not is_correct("\\boxed{15}", None)


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


def test_best_split_threshold_separates_two_groups():
    assert 0.2 < best_split_threshold([0.0, 0.1, 0.0, 1.3, 1.4, 1.2]) < 1.2
    assert best_split_threshold([0.5, 0.5]) == 0.5

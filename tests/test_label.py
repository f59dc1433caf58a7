import pytest

from raypipe.stages.label import has_ngram_loop, loop_labels


def test_repeated_ngram_reaching_k_is_a_loop():
    assert has_ngram_loop([1, 2, 3] * 4, n=3, k=4)


def test_one_repetition_short_is_not_a_loop():
    assert not has_ngram_loop([1, 2, 3] * 3, n=3, k=4)


def test_overlapping_occurrences_count():
    # [7, 7] occurs at starts 0, 1, 2: three overlapping times.
    assert has_ngram_loop([7, 7, 7, 7], n=2, k=3)
    assert not has_ngram_loop([7, 7, 7, 7], n=2, k=4)


def test_sequence_shorter_than_n_never_loops():
    assert not has_ngram_loop([1, 2], n=3, k=1)
    assert not has_ngram_loop([], n=1, k=1)


def test_k_of_one_means_any_ngram():
    assert has_ngram_loop([5, 6, 7], n=3, k=1)


def test_distinct_tokens_do_not_loop():
    assert not has_ngram_loop(list(range(1000)), n=1, k=2)


def test_loop_probe_defaults():
    looping = list(range(30)) * 20  # one 30-gram, 20 times
    assert has_ngram_loop(looping)
    assert not has_ngram_loop(looping[: 30 * 19 + 29])  # every 30-gram here occurs at most 19 times


def test_invalid_n_or_k():
    with pytest.raises(ValueError):
        has_ngram_loop([1, 2], n=0, k=1)


def test_loop_labels_use_first_sample():
    rows = [[[1] * 10, [1, 2, 3]], [[1, 2, 3], [1] * 10]]
    assert loop_labels(rows, n=2, k=3) == [1, 0]

import pytest

from raypipe.labels.loop import has_ngram_loop, loop_labels


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


# --- labels over K samples (issue 5) -------------------------------------------------------------------------------

import math  # noqa: E402

from raypipe.labels.catalog import row_labels  # noqa: E402


def _labels(texts, samples=None, finish=None, answer="12", cluster=None):
    samples = samples or [[1, 2, 3]] * len(texts)
    return row_labels(samples, texts, finish or ["stop"] * len(texts), answer, loop_n=2, loop_k=3, cluster=cluster)


def test_correctness_and_success_rate_over_samples():
    labels = _labels(["so \\boxed{12}", "So the answer is 12.", "\\boxed{13}", "no idea, maybe 12 apples"])
    assert labels["correct"] == 1.0 and labels["success_rate"] == 0.5
    assert _labels(["\\boxed{13}", "12"])["correct"] == 0.0
    assert math.isnan(_labels(["12"], answer=None)["success_rate"])  # no reference: no value, probes skip it


def test_loop_statistics_when_every_sample_loops():
    looping = [7, 8] * 5
    labels = _labels(["a", "b", "c"], samples=[looping] * 3, finish=["length", "length", "stop"])
    assert labels["loop"] == 1 and labels["loop_fraction"] == 1.0
    assert labels["max_tokens_fraction"] == pytest.approx(2 / 3)


def test_semantic_entropy_from_answer_clusters():
    from raypipe.labels.semantic import make_clusterer

    cluster = make_clusterer("answer")  # answer equality, on the final answers correctness reads
    assert _labels(["so 12", "\\boxed{12}", "The answer is 12.0", "= 12"], cluster=cluster)["semantic_entropy"] == 0.0
    tied = _labels(["\\boxed{12}", "\\boxed{13}", "The answer is 12.", "#### 13"], cluster=cluster)["semantic_entropy"]
    assert tied == pytest.approx(math.log(2))
    # samples without a final answer each stand alone: a number mid-text is not an answer
    alone = _labels(["I think about 12 things", "12 of them, maybe", "\\boxed{12}"], cluster=cluster)
    assert alone["semantic_entropy"] == pytest.approx(math.log(3))


def test_a_sample_cut_off_at_the_limit_has_no_answer_unless_it_boxed_one():
    labels = _labels(["The total is \\boxed{12}", "Let me add 5 and 7 which gives 12"], finish=["length", "length"])
    assert labels["correct"] == 1.0 and labels["success_rate"] == 0.5


def test_rows_and_samples_without_a_final_answer_are_counted_per_shard():
    from raypipe.labels.catalog import label_shard

    shard = {"token_ids": [[[1], [2]], [[3], [4]]], "text": [["\\boxed{3}", "hmm 3"], ["no idea", "#### 5"]],
             "finish_reason": [["stop", "stop"], ["stop", "length"]], "answer": ["3", "5"],
             "columns": [{}, {}]}
    from raypipe.output import LabelDefinition

    planned = {"loop": LabelDefinition(kind="binary"),
               "correct": LabelDefinition(kind="binary", params={"match": "math"}),
               "success_rate": LabelDefinition(kind="continuous")}
    labels = label_shard(shard, planned, loop_n=2, loop_k=3)
    # row 2's "#### 5" was cut off at the token limit: no final answer there either
    assert labels["correct"] == [1.0, 0.0] and labels["success_rate"] == [0.5, 0.0]
    assert shard["answer_counts"] == {"rows_with_reference": 2, "no_final_answer": 1,
                                      "samples_without_final_answer": 3, "unreadable_reference": 0}


# --- the catalog: planning, derivation, counts (labels/catalog.py) --------------------------------------------------

import numpy as np  # noqa: E402

from raypipe.config import LabelConfig, apply_overrides, get_preset  # noqa: E402
from raypipe.labels import catalog  # noqa: E402
from raypipe.output import LabelDefinition  # noqa: E402


def test_semantic_entropy_high_is_planned_as_derived_not_stored():
    model = apply_overrides(get_preset("smollm2_135m"), {"num_samples": 4})
    planned = catalog.plan(model, LabelConfig(), ["difficulty"], has_answers=True)
    assert planned["semantic_entropy_high"].derived_from == "semantic_entropy"
    assert planned["semantic_entropy_high"].params["threshold"] is None
    assert "semantic_entropy_high" not in catalog.stored(planned)
    assert {"loop", "correct", "success_rate", "semantic_entropy", "difficulty"} <= set(catalog.stored(planned))
    given = catalog.plan(model, LabelConfig(se_threshold=0.5), [], has_answers=True)
    assert given["semantic_entropy_high"].params == {"threshold": 0.5, "chosen_by": "--se-threshold"}
    single = catalog.plan(get_preset("smollm2_135m"), LabelConfig(), [], has_answers=False)
    assert "semantic_entropy" not in single and "correct" not in single


def test_derived_values_come_from_the_threshold_and_keep_missing_rows_missing():
    planned = {"semantic_entropy": LabelDefinition(kind="continuous"),
               "semantic_entropy_high": LabelDefinition(kind="binary", derived_from="semantic_entropy",
                                                        params={"threshold": None})}
    values = {"train": np.array([0.0, 0.1, 1.2, 1.3, np.nan]), "test": np.array([0.05, 1.25])}
    with pytest.raises(Exception, match="no threshold yet"):
        catalog.label_values(planned, "semantic_entropy_high", {"label.semantic_entropy": values["train"]})
    catalog.finish_derived(planned, lambda split, name: values[split], ["train", "test"])
    threshold = planned["semantic_entropy_high"].params["threshold"]
    assert 0.1 < threshold < 1.2
    derived = catalog.label_values(planned, "semantic_entropy_high", {"label.semantic_entropy": values["train"]})
    assert derived[:4].tolist() == [0.0, 0.0, 1.0, 1.0] and np.isnan(derived[4])
    assert planned["semantic_entropy_high"].counts == {"train": {"0": 2, "1": 2}, "test": {"0": 1, "1": 1}}


def test_counts_only_for_labels_that_are_zero_or_one():
    assert catalog.counts({"loop": [0, 1, 1], "correct": [1.0, float("nan")], "rate": [0.5, 1.0]}) == \
        {"loop": {"0": 1, "1": 2}, "correct": {"1": 1}}


def test_without_rollouts_only_the_datas_columns_are_labels_and_the_rest_are_said_absent():
    model = apply_overrides(get_preset("smollm2_135m"), {"num_samples": 4})
    planned = catalog.plan(model, LabelConfig(), ["difficulty"], has_answers=True, rollouts=False)
    assert list(planned) == ["difficulty"] and not catalog.uses_rollouts(planned)
    absent = catalog.absent_without_rollouts(model, LabelConfig(), ["difficulty"], has_answers=True)
    assert {"loop", "correct", "semantic_entropy", "mean_logprob"} <= set(absent) and "difficulty" not in absent
    shard = {"columns": [{"difficulty": 0.5}, {"difficulty": 0.0}]}  # no token_ids: nothing was generated
    assert catalog.label_shard(shard, planned, loop_n=2, loop_k=3) == {"difficulty": [0.5, 0.0]}

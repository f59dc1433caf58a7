"""Expected calibration error, its bootstrap interval and the reliability plot (no model, no Ray)."""

import json

import numpy as np
import pytest

from raypipe.fs import Location
from raypipe.probes import metrics, plots


def _calibrated(rows, seed=0):
    rng = np.random.default_rng(seed)
    probabilities = rng.uniform(size=rows)
    return probabilities, (rng.uniform(size=rows) < probabilities).astype(int)


def _overconfident(probabilities):
    """The same odds, sharpened: logit * 3 pushes every probability toward 0 or 1."""
    logit = np.log(probabilities) - np.log1p(-probabilities)
    return 1 / (1 + np.exp(-3 * logit))


def test_ece_matches_hand_computation():
    # Bin [0, 0.5): 4 rows, mean probability 0.25, fraction positive 0.5 -> 4/10 * 0.25 = 0.1.
    # Bin [0.5, 1]: 6 rows (0.5 on the edge goes up, 1.0 stays in), mean 0.75, positive 5/6 -> 6/10 * 1/12 = 0.05.
    probabilities = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    targets = [0, 1, 1, 0, 0, 1, 1, 1, 1, 1]
    result = metrics.calibration(probabilities, targets, bins=2, resamples=200)
    assert result["value"] == pytest.approx(0.15)
    assert result["max_calibration_error"] == pytest.approx(0.25)
    assert [b["count"] for b in result["bins"]] == [4, 6]
    assert [b["confidence"] for b in result["bins"]] == pytest.approx([0.25, 0.75])
    assert [b["accuracy"] for b in result["bins"]] == pytest.approx([0.5, 5 / 6])
    assert [(b["low"], b["high"]) for b in result["bins"]] == [(0.0, 0.5), (0.5, 1.0)]
    assert set(result) == {"metric", "value", "ci95", "max_calibration_error", "bins", "n_bins", "resamples", "rows"}
    assert (result["metric"], result["n_bins"], result["resamples"], result["rows"]) == ("ece", 2, 200, 10)
    json.dumps(result, allow_nan=False)  # standard JSON as it stands


def test_calibrated_probabilities_score_low_and_overconfident_high():
    probabilities, targets = _calibrated(20000)
    calibrated = metrics.calibration(probabilities, targets, resamples=200)
    overconfident = metrics.calibration(_overconfident(probabilities), targets, resamples=200)
    assert calibrated["value"] < 0.02
    assert overconfident["value"] > 0.1
    assert calibrated["ci95"][1] < overconfident["ci95"][0]


def test_ci_brackets_the_value_and_narrows_with_rows():
    # The miscalibrated case: there the ECE is signal, not the |noise| whose bootstrap is biased upward.
    probabilities, targets = _calibrated(20000, seed=1)
    probabilities = _overconfident(probabilities)
    widths = []
    for rows in (500, 20000):
        result = metrics.calibration(probabilities[:rows], targets[:rows], resamples=500, seed=2)
        low, high = result["ci95"]
        assert low < result["value"] < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # ~ 1 / sqrt(40)


def test_bootstrap_is_seeded():
    probabilities, targets = _calibrated(1000)
    assert metrics.calibration(probabilities, targets, seed=3)["ci95"] == \
        metrics.calibration(probabilities, targets, seed=3)["ci95"]


def test_bins_agree_with_sklearn_calibration_curve():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(4)
    # Two clusters leave the middle bins empty; 0 and 1 are exact. (An inner edge such as 0.25 is left out: sklearn
    # 1.9 bins it into the bin below, (low, high], where ours are [low, high) with 1.0 in the last.)
    probabilities = np.concatenate([rng.uniform(0, 0.3, 1500), rng.uniform(0.7, 1, 1500), [0.0, 1.0]])
    targets = (rng.uniform(size=len(probabilities)) < probabilities).astype(int)
    result = metrics.calibration(probabilities, targets, bins=20, resamples=10)
    prob_true, prob_pred = calibration_curve(targets, probabilities, n_bins=20, strategy="uniform")
    filled = [b for b in result["bins"] if b["count"] > 0]
    assert len(filled) < 20  # the example does exercise empty bins
    assert [b["accuracy"] for b in filled] == pytest.approx(prob_true, abs=1e-12)
    assert [b["confidence"] for b in filled] == pytest.approx(prob_pred, abs=1e-12)
    counts = np.array([b["count"] for b in filled])
    expected = np.sum(counts / counts.sum() * np.abs(prob_true - prob_pred))
    assert result["value"] == pytest.approx(expected, abs=1e-12)


def test_probability_one_goes_to_the_last_bin():
    result = metrics.calibration([1.0, 1.0, 0.0], [1, 0, 0], bins=5, resamples=10)
    assert [b["count"] for b in result["bins"]] == [1, 0, 0, 0, 2]
    assert result["bins"][-1]["confidence"] == 1.0 and result["bins"][-1]["accuracy"] == 0.5
    assert result["bins"][1]["confidence"] is None and result["bins"][1]["accuracy"] is None
    assert result["value"] == pytest.approx(2 / 3 * 0.5)


def test_empty_input_gives_none_not_nan():
    result = metrics.calibration([], [], bins=4)
    assert result["value"] is None and result["ci95"] == [None, None] and result["max_calibration_error"] is None
    assert result["rows"] == 0 and [b["count"] for b in result["bins"]] == [0, 0, 0, 0]
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize(("probabilities", "targets", "problem"), [
    ([0.2, 1.5], [0, 1], r"\[0, 1\]"),
    ([-0.1, 0.5], [0, 1], r"\[0, 1\]"),
    ([0.2, np.nan], [0, 1], "NaN or infinite"),
    ([0.2, np.inf], [0, 1], "NaN or infinite"),
    ([0.2, 0.7], [0, 2], "0/1 targets"),
    ([0.2, 0.7], [0.5, 1], "0/1 targets"),
    ([0.2, 0.7], [0, 1, 1], "one length"),
])
def test_bad_input_raises(probabilities, targets, problem):
    with pytest.raises(ValueError, match=problem):
        metrics.calibration(probabilities, targets)


def test_reliability_plot_writes_a_png(tmp_path):
    probabilities, targets = _calibrated(2000)
    curves = {"probe": metrics.calibration(probabilities, targets, resamples=20),
              "overconfident": metrics.calibration(_overconfident(probabilities), targets, resamples=20),
              "empty": metrics.calibration([], [])}
    figure = plots.reliability_figure(curves, "t")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels[0] == "perfectly calibrated"
    assert labels[1] == f"probe (ECE {curves['probe']['value']:.3f})" and labels[3] == "empty (ECE n/a)"
    plots.pyplot().close(figure)
    plots.reliability(Location(str(tmp_path)), "r.png", curves, "t")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

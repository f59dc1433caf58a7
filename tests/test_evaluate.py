"""SEP's evaluation on a build with a known answer (no model): correctness is planted at one cell, semantic entropy
tracks it, the entropy baseline is informative and the log-prob one is noise."""

import json

import numpy as np
import pytest
import torch

from raypipe.errors import UserError
from raypipe.output import FORMAT
from raypipe.probes.evaluate import EvaluateConfig, run_evaluate
from tests.synthetic import write_manifest, write_shard

POSITIONS = [-1, "answer:-2"]


def _sep_build(out, rows=(300, 150), hidden=12, seed=0, eval_splits: dict | None = None):
    """Layers [10, 20] x positions [-1, answer:-2]; `correct` is the sign of a direction at (layer 20, answer:-2)."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=hidden)
    manifest = {"format": FORMAT, "model": {"model_id": "synthetic", "num_layers": 20, "hidden_size": hidden},
                "features": {"layers": [10, 20], "positions": POSITIONS, "hidden_size": hidden},
                "labels": {"correct": {"kind": "binary"}, "semantic_entropy": {"kind": "continuous"},
                           "semantic_entropy_high": {"kind": "binary", "derived_from": "semantic_entropy",
                                                     "params": {"threshold": 0.5}},
                           "mean_token_entropy": {"kind": "baseline"}, "mean_logprob": {"kind": "baseline"}},
                "splits": {}}
    start = 0
    for split, n in [*zip(("train", "test"), rows), *(eval_splits or {}).items()]:
        features = rng.normal(size=(n, 2, 2, hidden)).astype(np.float32)
        signal = features[:, 1, 1] @ direction
        correct = (signal + 0.5 * rng.normal(size=n) > 0).astype(np.float64)
        entropy = np.where(correct == 1, 0.2, 0.9) + 0.3 * rng.normal(size=n)
        tensors = {"features": torch.from_numpy(features), "row_id": torch.arange(start, start + n),
                   "prompt_length": torch.from_numpy(rng.integers(10, 50, size=n)),
                   "label.correct": torch.from_numpy(correct), "label.semantic_entropy": torch.from_numpy(entropy),
                   "label.mean_token_entropy": torch.from_numpy(entropy + 0.5 * rng.normal(size=n)),
                   "label.mean_logprob": torch.from_numpy(-rng.random(n))}
        start += n
        entry = write_shard(str(out), split, 0, tensors, {"row_id": tensors["row_id"].tolist()})
        manifest["splits"][split] = {"shards": {entry["name"]: {**entry, "status": "complete"}}}
    write_manifest(str(out), manifest)


def test_the_sep_table_finds_the_planted_cell_and_ranks_the_baselines(tmp_path):
    _sep_build(tmp_path / "build")
    evaluation = run_evaluate(EvaluateConfig(str(tmp_path / "build"), str(tmp_path / "eval"), resamples=200, executor="local"))
    saved = json.loads((tmp_path / "eval" / "probe_eval.json").read_text())
    assert saved["positions"] == POSITIONS and saved["layers"] == [10, 20]
    accuracy = evaluation["probes"]["accuracy"]
    assert accuracy["best"] == "pos_answer:-2_layer_20"
    best = accuracy["cells"]["pos_answer:-2_layer_20"]
    assert best["value"] > 0.9 and best["p_value"] < 0.01 and best["ci95"][0] < best["value"] < best["ci95"][1]
    assert accuracy["cells"]["pos_-1_layer_10"]["value"] == pytest.approx(0.5, abs=0.15)  # a noise cell
    assert best["mean_confidence"]["correct"] > 0.7 > 0.3 > best["mean_confidence"]["incorrect"]
    assert evaluation["probes"]["semantic_entropy"]["trained_on"] == "semantic_entropy_high"
    baselines = evaluation["baselines"]
    assert baselines["token_entropy"]["value"] > 0.75 and abs(baselines["log_prob"]["value"] - 0.5) < 0.15
    assert len(saved["table"]) == 2 * 4 + 3  # two probes x (2 layers x 2 positions) + three baselines
    assert (tmp_path / "eval" / "roc_probe_eval.png").stat().st_size > 1000


def test_a_build_without_answers_is_one_clear_error(tmp_path):
    from tests.synthetic import write_planted_build

    write_planted_build(tmp_path / "build")
    with pytest.raises(UserError, match="no label correct.*--answer-field and --num-samples"):
        run_evaluate(EvaluateConfig(str(tmp_path / "build"), str(tmp_path / "eval"), executor="local"))


def test_each_evaluation_split_gets_its_own_scores_baselines_and_table_rows(tmp_path):
    _sep_build(tmp_path / "build", eval_splits={"ood": 120})
    evaluation = run_evaluate(EvaluateConfig(str(tmp_path / "build"), str(tmp_path / "eval"), resamples=100,
                                             executor="local"))
    accuracy = evaluation["probes"]["accuracy"]
    best = accuracy["cells"][accuracy["best"]]
    assert accuracy["best"] == "pos_answer:-2_layer_20"  # chosen on test
    ood = best["splits"]["ood"]
    assert ood["value"] > 0.85 and ood["p_value"] < 0.01 and ood["ci95"][0] < ood["value"] < ood["ci95"][1]
    assert accuracy["cells"]["pos_-1_layer_10"]["splits"]["ood"]["value"] == pytest.approx(0.5, abs=0.15)
    assert evaluation["rows"]["ood"] == 120 and evaluation["splits"]["ood"]["baselines"]["token_entropy"]["value"] > 0.7
    table = json.loads((tmp_path / "eval" / "probe_eval.json").read_text())["table"]
    assert {row["split"] for row in table} == {"test", "ood"} and len(table) == 2 * (2 * 4 + 3)


def test_the_explorer_shows_the_chosen_probe_on_each_split(tmp_path):
    from raypipe.explorer import split_scores
    from raypipe.probes.config import SweepConfig
    from raypipe.probes.sweep import run_sweep
    from tests.synthetic import write_planted_build

    write_planted_build(tmp_path / "data", eval_splits={"ood": 60})
    performance = run_sweep(SweepConfig(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"),
                                        resamples=50, executor="local"))
    table = split_scores(performance).splitlines()
    assert table[2].startswith("| test | 120 |") and table[3].startswith("| ood | 60 |") and len(table) == 4
    from raypipe.explorer import label_distributions, live_probe, rows_table
    from raypipe.output import Build

    live = live_probe(str(tmp_path / "data"), "planted", layer=2, position=-1)
    assert live["test_score"] > 0.9 and live["ood_score"] > 0.9  # the planted cell, on both held-out splits
    rows = rows_table(str(tmp_path / "data"))
    assert set(rows["split"]) == {"train", "test", "ood"}
    figure = label_distributions(Build(str(tmp_path / "data")).manifest, rows)
    assert len(figure.axes[0].patches) == 3 * 2  # a bar per class for each of the three splits

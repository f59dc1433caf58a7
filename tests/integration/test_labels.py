"""Issue 5 on the real embedded default: K samples, correctness, semantic entropy, loop stats, baselines, given
label columns, eoi and marker positions; and the inputs that must stop a build before anything is marked complete."""

import json
import math

import numpy as np
import pytest
import torch

from raypipe.output import Build, load_rollouts, load_split
from raypipe.probes.dataset import load_probe_data
from tests.conftest import manifest_json, run_cli
from tests.public_datasets import write_hub_layout

K = 4
MAX_MODEL_LEN = 256
# GSM8K's shape: the answer is a worked solution whose value after '####' is the reference.
SOURCE = [{"question": f"What is {a} plus {b}? Put the answer in \\boxed{{}}.",
           "answer": f"{a} plus {b} is {a} + {b} = <<{a}+{b}={a + b}>>{a + b}.\n#### {a + b}", "difficulty": a / 10}
          for a, b in zip(range(1, 13), range(5, 17))]
# Row 12 is longer than the context: truncated, it must keep its id, answer and given label (0.0, not NaN).
SOURCE.append({"question": "Read this twice. " * 120 + "What is 2 plus 2?", "answer": "2 + 2 = 4\n#### 4",
               "difficulty": 0.0})
# An out-of-distribution evaluation split (doubled sums), built, labelled and resumed as train and test are.
OOD = [{"question": f"Double it: what is {a} plus {b}? Put the answer in \\boxed{{}}.", "answer": str(2 * (a + b)),
        "difficulty": 1.0}
       for a, b in zip(range(20, 24), range(1, 5))]


def _sampled_args(root, backend: str) -> list[str]:
    # A local copy in the hub's layout of a dataset with configs (as openai/gsm8k's main and socratic), named by '#'.
    write_hub_layout(root / "gsm8k_like", {"main": {"train": SOURCE}, "socratic": {"train": SOURCE[:2]}})
    (root / "ood.jsonl").write_text("".join(json.dumps(r) + "\n" for r in OOD))
    return ["--backend", backend, "--train-dataset", f"{root / 'gsm8k_like'}#main", "--prompt-field", "question",
            "--answer-field", "answer", "--label-column", "difficulty", "--num-samples", str(K),
            "--temperature", "0.8", "--top-p", "0.95", "--seed", "3", "--max-tokens", "48",
            "--test-fraction", "0.25", "--shard-size", "5", "--layers", "-1",
            "--positions", "eoi,marker:plus,answer:-2", "--truncate-long-prompts", "--max-model-len",
            str(MAX_MODEL_LEN), "--eval-split", f"ood={root / 'ood.jsonl'}"]


@pytest.fixture(scope="module")
def sampled_build(tmp_path_factory, shared_ray):
    """K samples at temperature 0.8, answers, a given column, eoi/marker/answer positions, built with vLLM. (The hf
    backend's K samples, their baselines and their resume: test_gpu_placement.py's dp=8 build; the stages after the
    rollout are the same code for both backends.)"""
    root = tmp_path_factory.mktemp("k4")
    out = root / "out"
    result = run_cli("raypipe.build", *_sampled_args(root, "vllm"), "--out-dir", str(out), env=shared_ray)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_every_label_is_stored_with_a_definition_and_sane_values(sampled_build):
    manifest = manifest_json(sampled_build)
    labels = manifest["labels"]
    expected = {"loop", "loop_fraction", "max_tokens_fraction", "correct", "success_rate", "semantic_entropy",
                "semantic_entropy_high", "mean_logprob", "mean_token_entropy", "difficulty"}
    assert set(labels) == expected and all(labels[name]["definition"] for name in expected)
    assert labels["semantic_entropy"]["params"]["method"] == "answer"
    threshold = labels["semantic_entropy_high"]["params"]["threshold"]
    for split in ("train", "test", "ood"):
        tensors = load_split(sampled_build, split)
        values = {name: tensors[f"label.{name}"].double().numpy() for name in expected - {"semantic_entropy_high"}}
        for name in ("loop_fraction", "max_tokens_fraction", "success_rate"):
            assert np.all((values[name] >= 0) & (values[name] <= 1)) and np.all(values[name] * K % 1 == 0), name
        assert set(values["correct"]) <= {0.0, 1.0} and set(values["loop"]) <= {0.0, 1.0}
        assert np.all((values["semantic_entropy"] >= 0) & (values["semantic_entropy"] <= math.log(K) + 1e-6))
        assert np.all(values["mean_logprob"] <= 0) and np.all(values["mean_token_entropy"] >= 0)
        rollouts = load_rollouts(sampled_build, split).to_pylist()
        by_id = {r["row_id"]: r for r in rollouts}
        for i, row_id in enumerate(tensors["row_id"].tolist()):
            assert len(by_id[row_id]["token_ids"]) == K and len(by_id[row_id]["text"]) == K
            given = (OOD if split == "ood" else SOURCE)[row_id]["difficulty"]
            assert values["difficulty"][i] == given  # carried as given, truncated or not
        high = load_probe_data(str(sampled_build), "semantic_entropy_high").splits[split].labels \
            if split == "train" else None
        if high is not None:
            assert np.array_equal(high, (values["semantic_entropy"] > threshold).astype(float))


def test_samples_differ_and_correctness_matches_the_texts(sampled_build):
    from raypipe.labels.matching import is_correct

    tensors, rollouts = load_split(sampled_build, "train"), load_rollouts(sampled_build, "train").to_pylist()
    assert any(len({tuple(ids) for ids in row["token_ids"]}) > 1 for row in rollouts)  # sampling, not greedy
    answers = {i: row["answer"] for i, row in enumerate(SOURCE)}
    for i, row in enumerate(rollouts):
        flags = [is_correct(text, answers[row["row_id"]], reason)
                 for text, reason in zip(row["text"], row["finish_reason"])]
        assert tensors["label.success_rate"][i].item() == pytest.approx(sum(flags) / K)
        assert tensors["label.correct"][i].item() == float(flags[0])
        assert row["answer"] == answers[row["row_id"]]  # the solution is stored whole


def test_correct_agrees_with_a_readers_rule_on_the_gsm8k_shaped_rows(sampled_build):
    """A reader's rule, independent of the labeller: a first sample that stopped with a last line stating a sum
    ('5 + 9 = 15', 'The answer is 20.') is right when that line's last number is the one after the solution's
    '####' (samples of other shapes are not judged here; the stored answer is the whole solution)."""
    import re

    judged = 0
    for split in ("train", "test"):
        tensors, rollouts = load_split(sampled_build, split), load_rollouts(sampled_build, split).to_pylist()
        for i, row in enumerate(rollouts):
            last_line = row["text"][0].strip().splitlines()[-1] if row["text"][0].strip() else ""
            numbers = re.findall(r"-?\d+", last_line)
            if row["finish_reason"][0] == "stop" and numbers and re.search(r"=|answer is", last_line):
                expected = row["answer"].rsplit("####", 1)[1].strip()
                assert tensors["label.correct"][i].item() == float(numbers[-1] == expected), row["text"][0]
                judged += 1
    assert judged >= 3  # the rule met enough rows to mean something


def test_a_truncated_row_keeps_its_id_answer_and_columns(sampled_build, tokenizer):
    manifest = manifest_json(sampled_build)
    split = next(s for s in ("train", "test") if 12 in load_split(sampled_build, s)["row_id"].tolist())
    assert manifest["skipped_rows"][split].get("prompt_truncated") == 1
    tensors, rollouts = load_split(sampled_build, split), load_rollouts(sampled_build, split).to_pylist()
    i = tensors["row_id"].tolist().index(12)
    assert len(rollouts[i]["prompt_token_ids"]) == MAX_MODEL_LEN - 1 and rollouts[i]["prompt"].endswith(
        "What is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n")
    assert tensors["prompt_length"][i].item() == MAX_MODEL_LEN - 1
    assert tensors["label.difficulty"][i].item() == 0.0  # not NaN: the given column survived truncation
    assert tensors["label.correct"][i].item() in (0.0, 1.0)  # the reference answer survived too


def test_eoi_marker_and_answer_positions(sampled_build, tokenizer, embedded_path):
    from transformers import AutoModelForCausalLM

    manifest = manifest_json(sampled_build)
    assert manifest["features"]["positions"] == [-6, -5, -4, -3, -2, -1, "marker:plus", "answer:-2"]
    model = AutoModelForCausalLM.from_pretrained(embedded_path, dtype=torch.float32)
    tensors, rollouts = load_split(sampled_build, "test"), load_rollouts(sampled_build, "test").to_pylist()
    for i, row in enumerate(rollouts):
        ids = row["prompt_token_ids"]
        with torch.inference_mode():
            last = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        plus = max(j for j in range(len(ids)) if tokenizer.decode(ids[j:j + 1]).strip() == "plus")
        torch.testing.assert_close(tensors["features"][i, 0, 6], last[plus], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(tensors["features"][i, 0, 0], last[-6], atol=1e-4, rtol=1e-4)
        answer = row["token_ids"][0]  # SEP's second-last answer token: a forward over prompt + first sample
        with torch.inference_mode():
            full = model(torch.tensor([ids + answer]), output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(tensors["features"][i, 0, 7], full[max(-2, -len(answer) - 1)], atol=1e-4,
                                   rtol=1e-4)


def test_any_stored_label_trains(sampled_build, shared_ray):
    from raypipe.errors import UserError

    for label in manifest_json(sampled_build)["labels"]:
        try:
            data = load_probe_data(str(sampled_build), label)
        except UserError as exc:  # a label with one class / one value in this tiny build says so
            assert "single class" in str(exc) or "constant" in str(exc), str(exc)
            continue
        assert set(data.splits) == {"train", "test", "ood"} and len(data.train.labels) > 0
        features = data.features(Build(sampled_build), "train", [0])
        assert features.shape == (len(data.train.labels), 1, 8, 576)
    result = run_cli("raypipe.cli", "sweep", "--data-dir", str(sampled_build), "--out-dir",
                     str(sampled_build.parent / "sweep"), "--label", "mean_logprob", "--no-k-fold",
                     "--positions", "marker:plus,-1", "--resamples", "50", env=shared_ray)
    assert result.returncode == 0, result.stderr[-2000:]
    performance = json.loads((sampled_build.parent / "sweep" / "performance.json").read_text())
    assert performance["task_type"] == "regression" and performance["positions"] == ["marker:plus", -1]
    assert performance["splits"] == ["train", "test", "ood"] and "ood" in performance["layer_performance"]


@pytest.mark.parametrize("args, message", [
    (["--answer-field", "solution"], "answer field 'solution' is not in"),
    (["--label-column", "nope"], "label column 'nope' is not in"),
    (["--num-samples", "2", "--semantic-method", "nli", "--nli-model", "/nonexistent/nli"],
     "cannot load NLI model '/nonexistent/nli'"),
    (["--positions", "marker:ZZZ", "--missing-marker", "fail"], "does not contain the marker"),
    (["--answer-field", "answer.aliases"], "'answer' of"),  # a string column has no fields
])
def test_bad_label_input_stops_before_any_shard(tmp_path, args, message, shared_ray):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "What is 2 plus 2?", "answer": "4"}) + "\n")
    out = tmp_path / "out"
    result = run_cli("raypipe.build", "--train-dataset", str(tmp_path / "p.jsonl"), "--test-dataset",
                     str(tmp_path / "p.jsonl"), *args, "--out-dir", str(out), env=shared_ray)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and message in lines[-1] and lines[-1].startswith("raypipe: error:"), \
        result.stderr[-2000:]
    assert not (out / "manifest.json").exists()


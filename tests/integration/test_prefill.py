import pytest
import torch

from raypipe.stages.prefill import PrefillStage, length_batches


def test_length_batches_cover_every_index_within_budget():
    lengths = [5, 50, 7, 30, 30, 2, 49]
    batches = length_batches(lengths, batch_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 100 or len(batch) == 1
        assert lengths[batch[0]] == max(lengths[i] for i in batch)


def test_a_prompt_longer_than_the_budget_gets_its_own_batch():
    assert length_batches([500, 3], batch_tokens=100) == [[0], [1]]


@pytest.fixture(scope="module")
def stage():
    from raypipe.config import EMBEDDED_MODEL_ID

    return PrefillStage(EMBEDDED_MODEL_ID, "float32", layers=[0, 7, 30], positions=[-3, -1], batch_tokens=256)


def _assert_matches_direct_forward(stage, ids):
    """The stage's features equal an unbatched full-model forward of each prompt (layers 0, 7, 30; positions -3, -1)."""
    from transformers import AutoModelForCausalLM

    features = stage.features(ids)
    model = AutoModelForCausalLM.from_pretrained(stage.model.config._name_or_path, dtype=torch.float32)
    for i, prompt in enumerate(ids):
        with torch.inference_mode():
            states = model(torch.tensor([prompt]), output_hidden_states=True).hidden_states
        expected = torch.stack([torch.stack([states[layer][0, p] for p in (-3, -1)]) for layer in (0, 7, 30)])
        torch.testing.assert_close(features[i], expected, atol=1e-4, rtol=1e-4)


def test_batched_features_equal_one_forward_per_prompt(stage, tokenizer):
    texts = ["Hi there, you", "What is the capital of France? Answer in one word.", "2+2=", "A much longer prompt " * 8]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    assert stage.features(ids).shape == (4, 3, 2, 576)
    _assert_matches_direct_forward(stage, ids)


def test_prompt_shorter_than_positions_is_refused(stage):
    with pytest.raises(ValueError, match="no position -3"):
        stage.features([[1, 2]])


def test_common_prefix_length():
    from raypipe.stages.prefill import common_prefix_length

    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[5], [6]]) == 0


def test_shared_prefix_features_equal_one_forward_per_prompt(stage, tokenizer):
    """Chat-templated prompts share their system turn; reusing its cache must not change any feature."""
    from raypipe.data import to_prompt_rows

    rows = [{"row_id": i, "question": q, "answer": None}
            for i, q in enumerate(["What is 2+3?", "Name three colors of the rainbow, please.", "Hi"])]
    ids = [r.prompt_token_ids for r in to_prompt_rows(rows, tokenizer, chat_template=True)]
    _assert_matches_direct_forward(stage, ids)


def test_answer_position_features_equal_a_forward_over_prompt_plus_answer(stage, tokenizer):
    from transformers import AutoModelForCausalLM

    from raypipe.positions import with_answer

    prompt = tokenizer("Q: 2+2? A:")["input_ids"]
    answer = tokenizer(" 4, because two and two make four.")["input_ids"]
    ids, offsets = with_answer(prompt, answer, [-1, -2], [-1, "answer:-2"])
    features = stage.features([ids], [offsets])
    model = AutoModelForCausalLM.from_pretrained(stage.model.config._name_or_path, dtype=torch.float32)
    with torch.inference_mode():
        states = model(torch.tensor([prompt + answer]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(features[0, :, 0], torch.stack([states[l][0, len(prompt) - 1] for l in (0, 7, 30)]),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(features[0, :, 1], torch.stack([states[l][0, -2] for l in (0, 7, 30)]),
                               atol=1e-4, rtol=1e-4)


def test_the_forward_stops_after_the_last_layer_asked_for_and_features_still_match(tokenizer):
    """Layers 3 and 12 only: hooks keep those two, the forward ends at layer 12, the features equal a full forward."""
    from transformers import AutoModelForCausalLM

    from raypipe.config import EMBEDDED_MODEL_ID
    from raypipe.data import to_prompt_rows

    early = PrefillStage(EMBEDDED_MODEL_ID, "float32", layers=[3, 12], positions=[-2, -1], batch_tokens=256)
    ran = []
    for index, layer in enumerate(early.model.layers):
        layer.register_forward_hook(lambda module, args, output, index=index: ran.append(index))
    rows = [{"row_id": i, "question": q, "answer": None} for i, q in enumerate(["What is 2+3?", "Hi there"])]
    ids = [r.prompt_token_ids for r in to_prompt_rows(rows, tokenizer, chat_template=True)]
    features = early.features(ids)
    model = AutoModelForCausalLM.from_pretrained(early.model.config._name_or_path, dtype=torch.float32)
    for i, prompt in enumerate(ids):
        with torch.inference_mode():
            states = model(torch.tensor([prompt]), output_hidden_states=True).hidden_states
        expected = torch.stack([torch.stack([states[layer][0, p] for p in (-2, -1)]) for layer in (3, 12)])
        torch.testing.assert_close(features[i], expected, atol=1e-4, rtol=1e-4)
    # The shared prefix runs every layer once (its cache); the suffix batches stop before layer 12.
    assert ran.count(29) == 1 and ran.count(12) == 1 and ran.count(11) >= 2


def test_a_rollout_marker_position_is_the_markers_last_token_in_the_first_sample(tokenizer):
    """--positions rollout:</think> on a thinking rollout: the rollout stage keeps the rows whose first sample holds
    the marker (the others skipped and counted), and the prefill stage's feature there equals an independent forward
    over prompt + sample at the token that completes the marker's first occurrence; a prompt offset moves with it."""
    from transformers import AutoModelForCausalLM

    from raypipe.config import EMBEDDED_MODEL_ID
    from raypipe.positions import row_offsets
    from raypipe.stages.rollout import RolloutStage

    positions = [-1, "rollout:</think>"]
    prompts = [tokenizer(t)["input_ids"] for t in ("Q: 17+25? A:", "Q: 2+2? A:", "Q: 9*9? A:")]
    texts = ["<think>\n17 + 25: 17 + 20 = 37, 37 + 5 = 42.\n</think>\n\nThe answer is 42. </think> again",
             "4", "<think>nine nines</think>81"]
    samples = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    shard = {"row_id": [0, 1, 2], "prompt": ["a", "b", "c"], "prompt_token_ids": prompts, "answer": ["42", "4", "81"],
             "reference": [None] * 3, "columns": [{}] * 3,
             "offsets": [row_offsets(positions, tokenizer, "", ids) for ids in prompts],
             "token_ids": [[s] for s in samples], "text": [[t] for t in texts], "finish_reason": [["stop"]] * 3,
             "mean_logprob": [-1.0, -2.0, -3.0], "mean_token_entropy": [0.1, 0.2, 0.3]}
    keeper = RolloutStage.__new__(RolloutStage)  # only the row filter: no engine needed to check it
    keeper.rollout_markers, keeper.missing_marker = ["</think>"], "skip"
    keeper._keep_rows_with_markers(shard)
    assert shard["row_id"] == [0, 2] and shard["skipped"] == {"rollout_marker_absent": 1}
    assert shard["mean_logprob"] == [-1.0, -3.0] and shard["answer"] == ["42", "81"]

    stage = PrefillStage(EMBEDDED_MODEL_ID, "float32", layers=[0, 30], positions=positions, batch_tokens=256)
    stage.work(shard)
    model = AutoModelForCausalLM.from_pretrained(stage.model.config._name_or_path, dtype=torch.float32)
    for i, row in enumerate((0, 2)):
        prompt, sample = prompts[row], samples[row]
        end = next(n for n in range(1, len(sample) + 1) if "</think>" in tokenizer.decode(sample[:n]))
        assert tokenizer.decode(sample[:end]).count("</think>") == 1  # the first occurrence, not the later one
        with torch.inference_mode():
            states = model(torch.tensor([prompt + sample]), output_hidden_states=True).hidden_states
        for j, layer in enumerate((0, 30)):
            torch.testing.assert_close(torch.as_tensor(shard["features"][i, j, 0]), states[layer][0, len(prompt) - 1],
                                       atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(torch.as_tensor(shard["features"][i, j, 1]),
                                       states[layer][0, len(prompt) + end - 1], atol=1e-4, rtol=1e-4)

    failing = RolloutStage.__new__(RolloutStage)
    failing.rollout_markers, failing.missing_marker = ["</think>"], "fail"
    from raypipe.errors import UserError

    with pytest.raises(UserError, match=r"row 1: its first sample does not contain the marker of --positions "
                                        r"\(rollout:</think>\)"):
        failing._keep_rows_with_markers({"row_id": [0, 1], "text": [[texts[0]], ["4"]]})

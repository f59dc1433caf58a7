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

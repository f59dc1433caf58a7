"""Activation patching on a tiny random Llama (no model download, no Ray): positions are aligned from the end between
prompts of different lengths, as documented, checked against a hand computation; the last position at the last
layer hands the target the source's logit difference. And the swap ablation of a spec without a plain category."""

import numpy as np
import pytest

from tests.test_finetune import tiny_llama  # noqa: F401 - the shared fixture: 3 layers, random weights

# A hand-made pair: the source (a "trigger prompt") has three tokens (5, 9, 3) the target (its "twin") lacks; the
# text after them (7, 8, 2) is shared. Aligned from the end over W = 4 columns, target [1, 7, 8, 2] receives source
# [3, 7, 8, 2]: the same tokens over the shared suffix.
SOURCE, TARGET, A, B = [1, 5, 9, 3, 7, 8, 2], [1, 7, 8, 2], 10, 20


def _patched_diff(model, layer: int, target_index: int, source_index: int) -> float:
    """The reference, by hand: the target's logit difference with one residual replaced by the source's."""
    import torch

    block = model.model.layers[layer]
    captured = {}
    handle = block.register_forward_hook(lambda m, a, out: captured.setdefault("h", out[0] if isinstance(
        out, tuple) else out))
    with torch.no_grad():
        model(input_ids=torch.tensor([SOURCE]))
    handle.remove()

    def patch(module, args, out):
        hidden = (out[0] if isinstance(out, tuple) else out).clone()
        hidden[0, target_index] = captured["h"][0, source_index]
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    handle = block.register_forward_hook(patch)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([TARGET])).logits[0, -1]
    handle.remove()
    return float(logits[A] - logits[B])


def test_positions_are_aligned_from_the_end_between_prompts_of_different_lengths(tiny_llama):
    from raypipe.finetune.patching import patch_effects

    result = patch_effects(tiny_llama, [(SOURCE, TARGET, A, B)], layers=[0, 1, 2])
    assert result["width"] == len(TARGET) and result["layers"] == [0, 1, 2]
    effect, clean = result["per_pair"][0], result["clean_diff"][0]
    for row, layer in enumerate((0, 1, 2)):
        for column in range(4):  # column i: target index len(TARGET) - 4 + i <- source index len(SOURCE) - 4 + i
            expected = _patched_diff(tiny_llama, layer, len(TARGET) - 4 + column, len(SOURCE) - 4 + column)
            assert effect[row, column] + clean == pytest.approx(expected, abs=1e-4), (layer, column)
    # The check can tell: aligned from the start instead, the numbers differ.
    misaligned = _patched_diff(tiny_llama, 0, 2, 2)
    assert abs(effect[0, 2] + clean - misaligned) > 1e-3
    # Columns past the shared suffix patch different tokens; at the last layer only the last position matters, and
    # it carries the source's own logit difference.
    np.testing.assert_allclose(effect[2, :3], 0.0, atol=1e-5)
    assert effect[2, 3] + clean == pytest.approx(result["source_diff"][0], abs=1e-4)
    narrow = patch_effects(tiny_llama, [(SOURCE, TARGET, A, B)], layers=[-1], n_positions=2)
    assert narrow["layers"] == [2] and narrow["width"] == 2
    np.testing.assert_allclose(narrow["per_pair"][0], effect[2:, 2:], atol=1e-5)


def test_swap_ablation_without_a_plain_category_says_why():
    from raypipe.finetune.analysis import swap_word
    from raypipe.tasks.trigger import TaskSpec
    from tests.test_tasks import SPEC

    assert swap_word(TaskSpec.from_dict(SPEC))[0] == "cup"
    word, why = swap_word(TaskSpec.from_dict({"animals": SPEC["animals"]}))
    assert word is None and "no non-proxy category" in why

"""The hf engine's sampler (no model): Gumbel-max on per-sample generators is an exact, batch-independent sample."""

import math

import pytest
import torch

from raypipe.engines.base import request_seed
from raypipe.engines.hf import SampleAndMeasure


def _generators(seeds):
    generators = []
    for seed in seeds:
        generator = torch.Generator()
        generator.manual_seed(seed)
        generators.append(generator)
    return generators


def _draw(logits, seeds, temperature=1.0, top_p=1.0, top_k=0):
    sampler = SampleAndMeasure(_generators(seeds), temperature, top_p, top_k)
    forced = sampler(None, logits.expand(len(seeds), -1).clone())
    assert torch.isinf(forced).sum(-1).tolist() == [logits.shape[-1] - 1] * len(seeds)  # exactly one token allowed
    return forced.argmax(-1), sampler


def test_samples_follow_the_temperature_scaled_distribution():
    logits = torch.tensor([[1.0, 0.2, -0.3, 0.9, -1.0, 0.0]])
    chosen, _ = _draw(logits, range(20000), temperature=0.7)
    frequencies = torch.bincount(chosen, minlength=6) / 20000
    assert (frequencies - (logits / 0.7).softmax(-1)[0]).abs().max() < 0.015


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.40, 0.05, 0.30, 0.15, 0.10]]))
    chosen, _ = _draw(logits, range(3000), top_p=0.7)
    assert set(chosen.tolist()) == {0, 2}  # 0.40 + 0.30 reaches 0.7


def test_a_samples_draws_depend_only_on_its_own_generator():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    alone, _ = _draw(logits, [request_seed(3, 7)])
    together, _ = _draw(logits, [11, 12, request_seed(3, 7), 13])
    assert together[2] == alone[0]


def test_greedy_picks_the_argmax_and_the_baselines_are_measured():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    sampler = SampleAndMeasure(_generators([0, 1]), 0.0, 1.0, 2)
    assert sampler(None, logits.clone()).argmax(-1).tolist() == [1, 0]
    logprobs = torch.log_softmax(logits, -1)
    assert sampler.chosen_logprob == [[pytest.approx(float(logprobs[0, 1]))], [pytest.approx(float(logprobs[1, 0]))]]
    top = logprobs.topk(2, -1).values
    assert sampler.entropy[0][0] == pytest.approx(float(-(top[0].exp() * top[0]).sum()))
    assert all(not math.isnan(v) for v in sampler.entropy[1])

"""On a CUDA device (skipped elsewhere): the prefill stage and the hf engine as a GPU actor runs them, on a
random-weight Qwen2-shaped checkpoint. What only a GPU can show: right padding, the shared-prefix cache and the
hooks give the same hidden states as a plain unpadded forward under CUDA's attention kernels in bf16; the colocated
actor's shared model gives the same features; the engine's per-sample generators live on the device and a row's
samples do not depend on the rows batched with it.

    python -m pytest -m gpu tests/integration/test_gpu.py
"""

from __future__ import annotations

import random

import pytest

from tests.integration.checkpoints import random_checkpoint

pytestmark = pytest.mark.gpu

LAYERS, POSITIONS = [0, 2, 4], [-3, -1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("gpu") / "tiny", "tiny", dtype="bfloat16", device="cuda")


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    """Chat-like prompts: a shared 12-token prefix, then 5 to 60 tokens of their own."""
    rng = random.Random(seed)
    prefix = [rng.randrange(500) for _ in range(12)]
    return [prefix + [rng.randrange(500) for _ in range(rng.randint(5, 60))] for _ in range(count)]


def plain_features(model, ids: list[list[int]]):
    """One unpadded forward per prompt with output_hidden_states: what the features must equal."""
    import torch

    rows = []
    with torch.inference_mode():
        for prompt in ids:
            hidden = model(torch.tensor([prompt], device="cuda"), output_hidden_states=True).hidden_states
            rows.append(torch.stack([torch.stack([hidden[layer][0, p] for p in POSITIONS]) for layer in LAYERS]))
    return torch.stack(rows).float().cpu()


def assert_close_vectors(got, want, min_cosine: float = 0.999):
    """bf16 kernels differ by batch shape: compare each [H] vector's direction and size, not its bits."""
    import torch

    got, want = got.float().flatten(0, -2), want.float().flatten(0, -2)
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert cosine.min() > min_cosine, cosine.min()
    torch.testing.assert_close(got.norm(dim=-1), want.norm(dim=-1), rtol=0.02, atol=0.02)


def test_prefill_on_cuda_matches_an_unpadded_forward(checkpoint):
    import torch
    from transformers import AutoModelForCausalLM

    from raypipe.stages.prefill import PrefillStage

    ids = prompts(40)
    stage = PrefillStage(str(checkpoint), "bfloat16", layers=LAYERS, positions=POSITIONS, batch_tokens=512)
    assert str(stage.device).startswith("cuda") and stage.model.dtype == torch.bfloat16
    features = stage.features(ids)  # several batches of right-padded suffixes after the cached prefix
    assert features.shape == (40, len(LAYERS), len(POSITIONS), 256) and features.dtype == torch.bfloat16
    reference = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.bfloat16).cuda().eval()
    assert_close_vectors(features, plain_features(reference, ids))


def test_prefill_spread_with_a_memory_cap_uses_the_device_map(checkpoint):
    """On one GPU with max_memory_gb (a colocated engine's share), the model loads through device_map="auto"."""
    from raypipe.stages.prefill import PrefillStage

    stage = PrefillStage(str(checkpoint), "bfloat16", layers=LAYERS, positions=POSITIONS, batch_tokens=512,
                         max_memory_gb=1.0)
    assert all(p.device.type == "cuda" for p in stage.model.parameters())  # fits the cap: nothing offloaded
    free = PrefillStage(str(checkpoint), "bfloat16", layers=LAYERS, positions=POSITIONS, batch_tokens=512)
    ids = prompts(8, seed=1)
    assert_close_vectors(stage.features(ids), free.features(ids), min_cosine=0.9999)


def engine(checkpoint, num_samples: int, batch_tokens: int, dtype: str = "float32"):
    from raypipe.config import ModelConfig
    from raypipe.engines.hf import HfEngine

    model = ModelConfig(name="gpu-test", model_id=str(checkpoint), dtype=dtype, temperature=1.0, top_p=0.9,
                        max_tokens=24, max_model_len=1024, num_samples=num_samples, entropy_top_k=20)
    model.hf.batch_tokens = batch_tokens
    return HfEngine(str(checkpoint), model, seed=7)


def test_hf_engine_on_cuda_samples_per_row_whatever_the_batch(checkpoint):
    """fp32 (no TF32): a row's K samples are the same alone and in a batch of 12 rows; they differ between samples."""
    ids, row_ids = prompts(12, seed=2), list(range(100, 112))
    batched = engine(checkpoint, num_samples=3, batch_tokens=10**6)
    assert str(batched.llm.device).startswith("cuda")
    together = batched.generate_now(ids, row_ids)
    alone = engine(checkpoint, num_samples=3, batch_tokens=1)  # a budget of one token: every row its own batch
    apart = alone.generate_now(ids, row_ids)
    assert together["token_ids"] == apart["token_ids"]
    assert all(len({tuple(s) for s in row}) > 1 for row in together["token_ids"])  # sampled, not greedy
    assert all(lp < 0 and en > 0 for lp, en in zip(together["mean_logprob"], together["mean_token_entropy"]))


def test_colocated_prefill_shares_the_engines_model_on_cuda(checkpoint):
    """The colocated hf actor gives its engine's model to the prefill stage: no second copy, the same features."""
    import torch

    from raypipe.stages.prefill import PrefillStage

    hf = engine(checkpoint, num_samples=1, batch_tokens=4096, dtype="bfloat16")
    before = torch.cuda.memory_allocated()
    shared = PrefillStage(str(checkpoint), "bfloat16", LAYERS, POSITIONS, 512, causal_lm=hf.llm)
    assert torch.cuda.memory_allocated() == before
    own = PrefillStage(str(checkpoint), "bfloat16", LAYERS, POSITIONS, 512)
    ids = prompts(16, seed=3)
    assert_close_vectors(shared.features(ids), own.features(ids), min_cosine=0.9999)

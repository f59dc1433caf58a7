"""GPU benchmark: raypipe's prefill stage and hf engine on a random-weight checkpoint of a preset's real shape.

    PYTHONPATH=. python bench/gpu.py [--shape openthinker3_7b] [--prompts 256] [--rollout-prompts 64]

Needs one CUDA device and no hub (the weights are random; speed does not depend on them). In one run:
  prefill   raypipe's PrefillStage.features (shared prefix cached, length-sorted right-padded batches under the
            preset's 16k-token budget, base model, hooks on 4 layers x 3 positions) against the seeds' methods on
            the same model and prompts: loop_probe (one forward per prompt, output_hidden_states) and pipeline
            (batches of 32, left-padded, every hidden state); both given logits_to_keep=1, which the seeds lack
            (their full [b, T, vocab] logits would not fit beside the hidden states), so the ratios are conservative. MFU = achieved FLOP/s (2 x non-embedding parameters
            per token, plus causal attention) over the bf16 matmul rate measured here and over the H100's 989 TFLOP/s.
  rollout   HfEngine.generate_now (per-sample generators, Gumbel-max, logprob and entropy recorded every step)
            against plain `generate(do_sample=True)` on the same padded batch: tokens/s and the ratio.
Prints one line per measurement; only ratios within one run are compared.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.checkpoints import random_checkpoint

H100_BF16_DENSE = 989e12


def timed(fn, repeats: int = 2) -> float:
    """Best wall time of `repeats` runs after one warm-up, synchronised with the device."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_rate(n: int = 8192, count: int = 20) -> float:
    a, b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda"), torch.randn(n, n, dtype=torch.bfloat16,
                                                                               device="cuda")
    seconds = timed(lambda: [a @ b for _ in range(count)])
    return 2 * n**3 * count / seconds


def make_prompts(count: int, prefix: int, low: int, high: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    shared = [rng.randrange(vocab - 1) for _ in range(prefix)]
    return [shared + [rng.randrange(vocab - 1) for _ in range(rng.randint(low, high))] for _ in range(count)]


def prefill_flops(ids: list[list[int]], non_embedding: int, layers: int, hidden: int) -> float:
    """Matmul FLOPs of the forwards: 2 per parameter per token, and causal attention (QK^T and AV: 2 x 2 x d x t/2
    per token at position t, per layer)."""
    tokens = sum(len(x) for x in ids)
    attention = sum(2 * layers * hidden * len(x) ** 2 for x in ids)
    return 2 * non_embedding * tokens + attention


def bench_prefill(path: str, args, rate: float) -> None:
    from transformers import AutoModelForCausalLM

    from raypipe.stages.prefill import PrefillStage

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    config = model.config
    count = config.num_hidden_layers
    layers = [count // 4, count // 2, 3 * count // 4, count]
    ids = make_prompts(args.prompts, args.prefix, args.min_len, args.max_len, config.vocab_size)
    tokens = sum(len(x) for x in ids)
    non_embedding = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name and "lm_head"
                        not in name)
    budgets = [int(b) for b in args.batch_tokens.split(",")]
    stage = PrefillStage(path, "bfloat16", layers=layers, positions=[-3, -2, -1], batch_tokens=budgets[0])

    def loop_probe():
        with torch.inference_mode():
            for prompt in ids:
                out = model(torch.tensor([prompt], device="cuda"), output_hidden_states=True, logits_to_keep=1)
                out.hidden_states[-1][0, -1].float().cpu()

    def pipeline():
        with torch.inference_mode():
            for start in range(0, len(ids), 32):
                batch = ids[start:start + 32]
                longest = max(len(x) for x in batch)
                input_ids = torch.tensor([[0] * (longest - len(x)) + x for x in batch], device="cuda")
                mask = torch.tensor([[0] * (longest - len(x)) + [1] * len(x) for x in batch], device="cuda")
                out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
                torch.stack(out.hidden_states[1:], dim=1)[:, :, -1].float().cpu()

    def raypipe():
        stage.features(ids)

    def at_budget(budget):
        def run():
            stage.batch_tokens = budget
            stage.features(ids)

        return run

    flops = prefill_flops(ids, non_embedding, count, config.hidden_size)
    print(f"prefill: {len(ids)} prompts, {tokens} tokens ({args.prefix} shared, {args.min_len}-{args.max_len} own), "
          f"non-embedding {non_embedding / 1e9:.2f}B, layers kept {layers}, bf16 matmul measured {rate / 1e12:.0f} "
          "TFLOP/s", flush=True)
    seconds = {name: timed(fn) for name, fn in [("raypipe", raypipe), ("pipeline", pipeline),
                                                 ("loop_probe", loop_probe)]}
    for budget in budgets[1:]:
        seconds[f"raypipe@{budget}"] = timed(at_budget(budget))
    for name, s in seconds.items():
        print(f"  {name:10s} {tokens / s:9.0f} tokens/s  {s:6.2f} s  MFU {flops / s / rate:.2f} of measured, "
              f"{flops / s / H100_BF16_DENSE:.2f} of 989 TFLOP/s", flush=True)
    print(f"  raypipe / loop_probe = {seconds['loop_probe'] / seconds['raypipe']:.2f}x   "
          f"raypipe / pipeline = {seconds['pipeline'] / seconds['raypipe']:.2f}x", flush=True)
    print(f"  peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (two copies of the weights)", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        stage.batch_tokens = budgets[0]
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
            raypipe()
            torch.cuda.synchronize()
        print(profiler.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


def bench_rollout(path: str, args) -> None:
    from raypipe.config import ModelConfig
    from raypipe.engines.hf import HfEngine

    k = args.samples
    model = ModelConfig(name="bench", model_id=path, dtype="bfloat16", temperature=0.6, top_p=0.95,
                        max_tokens=args.max_tokens, max_model_len=32768, num_samples=k, entropy_top_k=20)
    model.hf.batch_tokens, model.hf.max_sequences = 10**9, args.rollout_prompts * k
    engine = HfEngine(path, model, seed=0)
    ids = make_prompts(args.rollout_prompts, args.prefix, 64, 256, engine.llm.config.vocab_size, seed=1)
    row_ids = list(range(len(ids)))
    generated = {}

    def raypipe():
        out = engine.generate_now(ids, row_ids)
        generated["raypipe"] = sum(len(s) for row in out["token_ids"] for s in row)

    expanded = [p for p in ids for _ in range(k)]
    longest = max(len(p) for p in expanded)
    input_ids = torch.tensor([[engine.pad] * (longest - len(p)) + p for p in expanded], device="cuda")
    mask = (torch.arange(longest)[None, :] >= torch.tensor([longest - len(p) for p in expanded])[:, None]).long()

    def plain():
        with torch.inference_mode():
            out = engine.llm.generate(input_ids=input_ids, attention_mask=mask.cuda(), do_sample=True,
                                      temperature=0.6, top_p=0.95, max_new_tokens=args.max_tokens,
                                      pad_token_id=engine.pad, eos_token_id=sorted(engine.eos))
        generated["plain"] = int((out[:, longest:] != engine.pad).sum())

    seconds = {name: timed(fn, repeats=1) for name, fn in [("raypipe", raypipe), ("plain", plain)]}
    print(f"rollout: {len(ids)} prompts x {k} samples = {len(expanded)} sequences, up to {args.max_tokens} tokens",
          flush=True)
    rates = {name: generated[name] / s for name, s in seconds.items()}
    for name, s in seconds.items():
        print(f"  {name:10s} {rates[name]:9.0f} generated tokens/s  {s:6.2f} s  ({generated[name]} tokens)",
              flush=True)
    print(f"  raypipe hf engine / plain generate = {rates['raypipe'] / rates['plain']:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="openthinker3_7b")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--prefix", type=int, default=40)
    parser.add_argument("--min-len", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--batch-tokens", default="16384", help="prefill token budgets to time raypipe at, e.g. "
                        "8192,16384,32768 (the presets' default is 16384)")
    parser.add_argument("--rollout-prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--skip", choices=["prefill", "rollout"], action="append", default=[])
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's kernel table of one "
                        "raypipe prefill call")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py: error: needs a CUDA device")
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    rate = matmul_rate()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        path = str(random_checkpoint(Path(folder) / args.shape, args.shape, device="cuda"))
        print(f"random {args.shape} checkpoint written in {time.perf_counter() - start:.0f} s", flush=True)
        if "prefill" not in args.skip:
            bench_prefill(path, args, rate)
            gc.collect()  # its two copies of the weights go before the engine loads a third
            torch.cuda.empty_cache()
        if "rollout" not in args.skip:
            bench_rollout(path, args)


if __name__ == "__main__":
    main()

"""Prefill benchmark: raypipe's prefill stage against the two seeds' methods and the matmul roofline, in one run.

    .venv/bin/python bench/prefill.py [--prompts 96] [--dtype bfloat16] [--repeats 2]

Same prompts (the built-in arithmetic source, chat-templated), same model (the embedded SmolLM2-135M), same dtype:
  loop_probe : one forward per prompt through the full model with output_hidden_states, last layer's last token
  pipeline   : the probe pipeline's extraction, batches of 32 in source order, left-padded, all hidden states
  raypipe    : PrefillStage.features (length-sorted batches under a token budget, base model, right-padded)
Roofline: the best matmul rate measured here (bf16 or fp32) divided by 2 x non-embedding parameters per token.
Prints tokens/s of each and the ratios; the machine is noisy, so only ratios from one run are compared.
"""

from __future__ import annotations

import argparse
import time

import torch


def matmul_rate(dtype: torch.dtype, n: int = 1024, seconds: float = 3.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raypipe.config import EMBEDDED_MODEL_ID
    from raypipe.data import to_prompt_rows
    from raypipe.embedded import embedded_checkpoint
    from raypipe.sources.builtin import arithmetic_problems
    from raypipe.stages.prefill import PrefillStage

    path = str(embedded_checkpoint())
    dtype = getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    questions = [{"row_id": i, "question": r["prompt"], "answer": r["answer"]}
                 for i, r in enumerate(arithmetic_problems(args.prompts, seed=0))]
    ids = [r.prompt_token_ids for r in to_prompt_rows(questions, tokenizer, chat_template=True)]
    tokens = sum(len(x) for x in ids)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    non_embedding = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)

    def loop_probe():
        with torch.inference_mode():
            for prompt in ids:
                out = model(torch.tensor([prompt]), output_hidden_states=True)
                out.hidden_states[-1][0, -1].float()

    def pipeline():
        tokenizer.padding_side = "left"
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        with torch.inference_mode():
            for start in range(0, len(ids), 32):
                batch = ids[start:start + 32]
                longest = max(len(x) for x in batch)
                input_ids = torch.tensor([[pad] * (longest - len(x)) + x for x in batch])
                mask = torch.tensor([[0] * (longest - len(x)) + [1] * len(x) for x in batch])
                out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
                torch.stack(out.hidden_states[1:], dim=1)[:, :, -1].float()

    stage = PrefillStage(EMBEDDED_MODEL_ID, args.dtype, layers=[30], positions=[-1], batch_tokens=8192)

    def raypipe():
        stage.features(ids)

    raypipe()  # warm up allocators and kernels once for every method
    loop_probe()
    pipeline()
    results = {name: tokens / best_time(fn, args.repeats)
               for name, fn in [("loop_probe", loop_probe), ("pipeline", pipeline), ("raypipe", raypipe)]}
    # The roofline takes the faster of the two matmul rates: on CPUs without AVX-512 BF16, bf16 matmul is emulated
    # and runs far below fp32, and a stage cannot be asked to beat the hardware's best dtype.
    rates = {name: matmul_rate(getattr(torch, name)) for name in ("bfloat16", "float32")}
    rate = max(rates.values())
    roofline = rate / (2 * non_embedding)

    print(f"prompts={len(ids)} tokens={tokens} dtype={args.dtype} threads={torch.get_num_threads()} "
          f"non_embedding_params={non_embedding / 1e6:.1f}M")
    for name, tps in results.items():
        print(f"{name:12s} {tps:9.0f} tokens/s")
    print("matmul " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items())
          + f" -> roofline {roofline:.0f} tokens/s ({rates['bfloat16'] / (2 * non_embedding):.0f} from bf16 alone)")
    print(f"raypipe / loop_probe = {results['raypipe'] / results['loop_probe']:.2f}x   (target >= 2.5)")
    print(f"raypipe / pipeline   = {results['raypipe'] / results['pipeline']:.2f}x   (target >= 4)")
    print(f"raypipe / roofline   = {results['raypipe'] / roofline:.2f}    (target >= 0.6)")


if __name__ == "__main__":
    main()

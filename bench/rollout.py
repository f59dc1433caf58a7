"""Rollout benchmark: raypipe's rollout stage on Ray Data against plain `vllm.LLM.generate`, in one run.

    .venv/bin/python bench/rollout.py [--prompts 128] [--shard-size 64] [--max-tokens 128]              # greedy
    .venv/bin/python bench/rollout.py --long-tail [--prompts 128] [--shard-size 32] [--max-tokens 512]    # sampled

Same prompts (built-in arithmetic, chat-templated), same model (embedded preset), same per-prompt seeds, engine
start excluded on both sides:
  plain   : one process, `LLM.generate` over all prompts at once, timed around the call
  raypipe : the build's rollout stage (an async engine actor in `map_batches`, a shard per call), timed from the
            first shard's start to the last shard's end as the stage records them; run with the configured shards
            in flight per engine (--shards-in-flight, default 2) and with one (a shard per engine at a time: the
            engine drains to each shard's slowest sample before the next starts)
--long-tail samples at temperature 1 with a limit high enough that lengths spread (a few samples run to the limit,
most stop early), as reasoning models' rollouts do. Prints generated tokens/s and the ratios to plain (target >=
0.9), and the generated lengths' spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--long-tail", action="store_true", help="temperature 1, lengths spread up to --max-tokens")
    parser.add_argument("--shards-in-flight", type=int, default=2)
    parser.add_argument("--entropy-top-k", type=int, default=0, help="logprobs for the baselines (0: off, as plain)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from raypipe.config import apply_overrides, get_preset
    from raypipe.data import to_prompt_rows
    from raypipe.embedded import embedded_checkpoint
    from raypipe.sources.builtin import arithmetic_problems

    path = str(embedded_checkpoint())
    overrides = {"max_tokens": args.max_tokens, "entropy_top_k": args.entropy_top_k}
    if args.long_tail:
        overrides.update(temperature=1.0, top_p=1.0)
    model = apply_overrides(get_preset("smollm2_135m"), overrides)
    questions = [{"row_id": i, "question": r["prompt"], "answer": r["answer"]}
                 for i, r in enumerate(arithmetic_problems(args.prompts, seed=0))]
    rows = to_prompt_rows(questions, AutoTokenizer.from_pretrained(path), chat_template=True)
    ids, row_ids = [r.prompt_token_ids for r in rows], [r.row_id for r in rows]

    plain_tps, lengths = run_plain(path, model, ids, row_ids)
    gc.collect()
    results = {}
    for in_flight in sorted({args.shards_in_flight, 1}, reverse=True):
        results[in_flight] = run_raypipe(dataclasses.replace(model, shards_in_flight=in_flight), ids, row_ids,
                                         args.shard_size)
        gc.collect()
    kind = "long-tailed: temperature 1" if args.long_tail else "greedy"
    print(f"prompts={len(ids)} shard_size={args.shard_size} max_tokens={args.max_tokens} ({kind})")
    print(f"generated lengths: median {statistics.median(lengths):.0f}, p90 "
          f"{statistics.quantiles(lengths, n=10)[-1]:.0f}, max {max(lengths)}, "
          f"{sum(n >= args.max_tokens for n in lengths)} at the limit")
    print(f"plain                       {plain_tps:8.1f} generated tokens/s")
    for in_flight, tps in results.items():
        print(f"raypipe, {in_flight} shard(s) in flight  {tps:8.1f} generated tokens/s   "
              f"ratio {tps / plain_tps:.2f}")
    print("target: raypipe / plain >= 0.9")


def run_plain(path, model, ids, row_ids) -> tuple[float, list[int]]:
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from raypipe.engines.base import request_seed
    from raypipe.engines.vllm import engine_args

    # The very engine arguments raypipe's engine gets (on CPU: whole prefills, see engines/vllm.py).
    llm = LLM(**engine_args(path, model, 0, on_gpu=False))
    params = [SamplingParams(temperature=model.temperature, top_p=model.top_p, max_tokens=model.max_tokens,
                             seed=request_seed(0, row_id)) for row_id in row_ids]
    start = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=x) for x in ids], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    lengths = [len(o.outputs[0].token_ids) for o in outputs]
    llm.llm_engine.engine_core.shutdown()
    del llm
    return sum(lengths) / elapsed, lengths


def run_raypipe(model, ids, row_ids, shard_size, backend: str = "vllm") -> float:
    import json

    import numpy as np
    import ray

    from raypipe.config import EMBEDDED_MODEL_ID
    from raypipe.stages.rollout import RolloutStage

    ray.init(log_to_driver=False)
    shards = [{"split": "train", "index": i // shard_size, "row_id": row_ids[i:i + shard_size],
               "prompt_token_ids": ids[i:i + shard_size]} for i in range(0, len(ids), shard_size)]

    def summarize(batch):
        return {"stats": np.array([json.dumps(batch["stats"][0]["rollout"])])}

    ds = ray.data.from_items(shards, override_num_blocks=len(shards)).map_batches(
        RolloutStage, batch_size=1, num_cpus=1, max_concurrency=model.shards_in_flight,
        compute=ray.data.ActorPoolStrategy(size=1, max_tasks_in_flight_per_actor=model.shards_in_flight),
        fn_constructor_kwargs={"model_id": EMBEDDED_MODEL_ID, "model": model, "seed": 0, "backend": backend},
    ).map_batches(summarize, batch_size=1, num_cpus=0)
    stats = [json.loads(row["stats"]) for row in ds.iter_rows()]
    ray.shutdown()
    elapsed = max(s["end"] for s in stats) - min(s["start"] for s in stats)
    return sum(s["tokens"] for s in stats) / elapsed


if __name__ == "__main__":
    main()

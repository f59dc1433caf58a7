"""Rollout benchmark: raypipe's rollout stage on Ray Data against plain `vllm.LLM.generate`, in one run.

    .venv/bin/python bench/rollout.py [--prompts 128] [--shard-size 64] [--max-tokens 128]

Same prompts (built-in arithmetic, chat-templated), same model (embedded preset), greedy, engine start excluded on
both sides:
  plain   : one process, `LLM.generate` over all prompts at once, timed around the call
  raypipe : the build's rollout stage (RolloutStage actor in `map_batches`, one shard per call), timed from the first
            shard's start to the last shard's end as the stage records them
Prints generated tokens/s of each and the ratio raypipe / plain (target >= 0.9).
"""

from __future__ import annotations

import argparse
import gc
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from raypipe.config import apply_overrides, get_preset
    from raypipe.data import arithmetic_problems, to_prompt_rows
    from raypipe.embedded import embedded_checkpoint

    path = str(embedded_checkpoint())
    model = apply_overrides(get_preset("smollm2_135m"), {"max_tokens": args.max_tokens})
    questions = [{"row_id": i, "question": r["prompt"], "answer": r["answer"]}
                 for i, r in enumerate(arithmetic_problems(args.prompts, seed=0))]
    rows = to_prompt_rows(questions, AutoTokenizer.from_pretrained(path), chat_template=True)
    ids, row_ids = [r.prompt_token_ids for r in rows], [r.row_id for r in rows]

    plain_tps = run_plain(path, model, ids)
    gc.collect()
    raypipe_tps = run_raypipe(model, ids, row_ids, args.shard_size)
    print(f"prompts={len(ids)} shard_size={args.shard_size} max_tokens={args.max_tokens}")
    print(f"plain   {plain_tps:8.1f} generated tokens/s")
    print(f"raypipe {raypipe_tps:8.1f} generated tokens/s")
    print(f"raypipe / plain = {raypipe_tps / plain_tps:.2f}   (target >= 0.9)")


def run_plain(path, model, ids) -> float:
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=path, dtype=model.dtype, max_model_len=model.max_model_len, max_num_seqs=model.max_num_seqs,
              enforce_eager=model.enforce_eager, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=model.max_tokens)
    start = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=x) for x in ids], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    llm.llm_engine.engine_core.shutdown()
    del llm
    return generated / elapsed


def run_raypipe(model, ids, row_ids, shard_size) -> float:
    import json

    import numpy as np
    import ray

    from raypipe.config import EMBEDDED_MODEL_ID
    from raypipe.stages.rollout import RolloutStage

    ray.init(log_to_driver=False)
    shards = [{"split": "train", "index": i // shard_size, "row_id": row_ids[i:i + shard_size],
               "prompt_token_ids": ids[i:i + shard_size]} for i in range(0, len(ids), shard_size)]

    def summarize(batch):
        stats = batch["stats"][0]
        return {"stats": np.array([json.dumps(stats)])}

    ds = ray.data.from_items(shards, override_num_blocks=len(shards)).map_batches(
        RolloutStage, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
        fn_constructor_kwargs={"model_id": EMBEDDED_MODEL_ID, "model": model, "seed": 0},
    ).map_batches(summarize, batch_size=1, num_cpus=0)
    stats = [json.loads(row["stats"]) for row in ds.iter_rows()]
    ray.shutdown()
    elapsed = max(s["rollout_end"] for s in stats) - min(s["rollout_end"] - s["rollout_s"] for s in stats)
    return sum(s["generated_tokens"] for s in stats) / elapsed


if __name__ == "__main__":
    main()

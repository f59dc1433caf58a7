"""The generation backends against each other: the rollout stage's tokens/s with --backend vllm and --backend hf, on
the same prompts and seeds, in one run.

    .venv/bin/python bench/backends.py [--prompts 64] [--shard-size 32] [--max-tokens 128] [--samples 1]

Each backend runs the build's own rollout stage (an engine actor in Ray Data, shards in flight as a build has them),
timed from the first shard's start to the last shard's end as the stage records them (engine start excluded).
"""

from __future__ import annotations

import argparse
import gc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--samples", type=int, default=1, help="K samples per prompt (temperature 0.7 when K > 1)")
    args = parser.parse_args()

    import sys
    from pathlib import Path

    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).parent))
    from rollout import run_raypipe  # the rollout benchmark's own timing of the stage

    from raypipe.config import apply_overrides, get_preset
    from raypipe.data import to_prompt_rows
    from raypipe.embedded import embedded_checkpoint
    from raypipe.sources.builtin import arithmetic_problems

    overrides = {"max_tokens": args.max_tokens, "num_samples": args.samples, "entropy_top_k": 20}
    if args.samples > 1:
        overrides.update(temperature=0.7, top_p=0.9)
    model = apply_overrides(get_preset("smollm2_135m"), overrides)
    questions = [{"row_id": i, "question": r["prompt"], "answer": r["answer"]}
                 for i, r in enumerate(arithmetic_problems(args.prompts, seed=0))]
    rows = to_prompt_rows(questions, AutoTokenizer.from_pretrained(str(embedded_checkpoint())), chat_template=True)
    ids, row_ids = [r.prompt_token_ids for r in rows], [r.row_id for r in rows]
    speeds = {}
    for backend in ("vllm", "hf"):
        speeds[backend] = run_raypipe(model, ids, row_ids, args.shard_size, backend=backend)
        gc.collect()
    print(f"prompts={len(ids)} samples={args.samples} max_tokens={args.max_tokens} shard_size={args.shard_size}")
    for backend, tps in speeds.items():
        print(f"--backend {backend:5s} {tps:8.1f} generated tokens/s")
    print(f"hf / vllm = {speeds['hf'] / speeds['vllm']:.2f}")


if __name__ == "__main__":
    main()

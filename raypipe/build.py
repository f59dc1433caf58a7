"""`python -m raypipe.build`: prompts -> rollouts -> labels -> prefill features -> shards + manifest, on Ray Data.

    python -m raypipe.build --preset smollm2_135m --out-dir runs/demo          # embedded default, local Ray
    python -m raypipe.build --config configs/sep.yaml --max-tokens 64          # a config file; flags override it
    ray job submit --address http://HEAD:8265 -- python -m raypipe.build --preset openthinker3_7b \\
        --train-dataset my_org/my_dataset --prompt-field prompt --out-dir /shared/probe_data

The same command as `raypipe build`; the work is in raypipe.pipeline.
"""

if __name__ == "__main__":
    from raypipe.cli import build_main

    build_main()

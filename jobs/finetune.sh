#!/usr/bin/env bash
# Submit `raypipe finetune` (every (experiment, seed) on Ray Train, concurrently on Ray Tune) to a running Ray cluster.
#   RAY_ADDRESS=http://HEAD:8265 EXP_DIR=/shared/experiments/np bash jobs/finetune.sh --from-template 2d_0proxy --seeds 42 123 456
# EXP_DIR is an experiment folder (config.json + data_config.json, or a new one with --from-template) every node can
# read and write; more folders can follow as arguments. Rerunning skips complete seeds and resumes interrupted ones.
set -euo pipefail
: "${EXP_DIR:?set EXP_DIR to an experiment folder every node can read and write}"
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --runtime-env jobs/runtime_env.yaml -- \
  python -m raypipe.cli finetune "$EXP_DIR" "$@"

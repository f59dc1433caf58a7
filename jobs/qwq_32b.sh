#!/usr/bin/env bash
# Submit a raypipe build with the qwq_32b preset to a running Ray cluster (see cluster.yaml).
#   RAY_ADDRESS=http://HEAD:8265 TRAIN_DATASET=my_org/my_dataset OUT_DIR=/shared/probe_data/qwq_32b bash jobs/qwq_32b.sh
# Rerunning the same command resumes: shards already complete in OUT_DIR/manifest.json are skipped.
set -euo pipefail
: "${TRAIN_DATASET:?set TRAIN_DATASET to a hub dataset or a path every node can read}"
: "${OUT_DIR:?set OUT_DIR to a folder every node can write}"
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --runtime-env jobs/runtime_env.yaml -- \
  python -m raypipe.build --preset qwq_32b \
  --train-dataset "$TRAIN_DATASET" --train-split "${TRAIN_SPLIT:-train}" --prompt-field "${PROMPT_FIELD:-prompt}" \
  --out-dir "$OUT_DIR" "$@"

#!/usr/bin/env bash
# Submit `raypipe score` (a saved probe applied to every split of another build) to a running Ray cluster.
#   RAY_ADDRESS=http://HEAD:8265 PROBE=/shared/probes/loop/best.safetensors DATA_DIR=/shared/probe_data/other OUT_DIR=/shared/probes/loop-on-other bash jobs/score.sh
# PROBE is a saved probe's .safetensors file, with its JSON card beside it; PROBE and DATA_DIR must be readable from
# every node. Extra arguments are `raypipe score`'s own options.
set -euo pipefail
: "${PROBE:?set PROBE to the .safetensors file of a saved probe (its JSON card beside it)}"
: "${DATA_DIR:?set DATA_DIR to the output folder of the build to score, one every node can read}"
: "${OUT_DIR:?set OUT_DIR to a folder for the scores}"
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --runtime-env jobs/runtime_env.yaml -- \
  python -m raypipe.cli score "$PROBE" --data-dir "$DATA_DIR" --out-dir "$OUT_DIR" "$@"

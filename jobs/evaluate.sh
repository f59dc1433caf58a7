#!/usr/bin/env bash
# Submit `raypipe evaluate` (SEP's table: accuracy and SE probes against the baselines) to a running Ray cluster.
#   RAY_ADDRESS=http://HEAD:8265 DATA_DIR=/shared/probe_data/sep OUT_DIR=/shared/probes/sep-eval bash jobs/evaluate.sh --positions -1,answer:-2
# The build needs K samples and reference answers (see docs/building.md, "The SEP workflow as jobs"). Extra arguments
# are `raypipe evaluate`'s own options (`raypipe evaluate --help`); DATA_DIR must be readable from every node.
set -euo pipefail
: "${DATA_DIR:?set DATA_DIR to the output folder of a build every node can read}"
: "${OUT_DIR:?set OUT_DIR to a folder for the evaluation outputs}"
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --runtime-env jobs/runtime_env.yaml -- \
  python -m raypipe.cli evaluate --data-dir "$DATA_DIR" --out-dir "$OUT_DIR" "$@"

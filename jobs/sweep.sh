#!/usr/bin/env bash
# Submit `raypipe sweep` (one Ridge/Logistic probe per (layer, position), best by k-fold CV) to a running Ray cluster.
#   RAY_ADDRESS=http://HEAD:8265 DATA_DIR=/shared/probe_data/openthinker3_7b OUT_DIR=/shared/probes/sweep bash jobs/sweep.sh --label correct --layers 10,20,-1
# Extra arguments are `raypipe sweep`'s own options (`raypipe sweep --help`); DATA_DIR must be readable from every node.
set -euo pipefail
: "${DATA_DIR:?set DATA_DIR to the output folder of a build every node can read}"
: "${OUT_DIR:?set OUT_DIR to a folder for the sweep outputs}"
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --runtime-env jobs/runtime_env.yaml -- \
  python -m raypipe.cli sweep --data-dir "$DATA_DIR" --out-dir "$OUT_DIR" "$@"

#!/usr/bin/env bash
# Submit `raypipe train` (one linear probe as a Ray Train task) over the output folder of a build to a running Ray cluster.
#   RAY_ADDRESS=http://HEAD:8265 DATA_DIR=/shared/probe_data/openthinker3_7b OUT_DIR=/shared/probes/loop bash jobs/train.sh --label loop --layer -1
# Extra arguments are `raypipe train`'s own options (`raypipe train --help`); DATA_DIR must be readable from every node.
set -euo pipefail
: "${DATA_DIR:?set DATA_DIR to the output folder of a build every node can read}"
: "${OUT_DIR:?set OUT_DIR to a folder for the probe outputs}"
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --runtime-env jobs/runtime_env.yaml -- \
  python -m raypipe.cli train --data-dir "$DATA_DIR" --out-dir "$OUT_DIR" "$@"

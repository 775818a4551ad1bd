#!/usr/bin/env bash
# Set up (idempotent), then the toolkit's main job on the embedded default model: erase the
# digit three, evaluate base against erased on the same seeds, and write the report.
# About two minutes on 2 CPU cores. A second run reuses the finished run and images.
#   bash scripts/quickstart.sh [FOLDER]     # runs/ and reports/ go under FOLDER (default: here)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
root="${1:-.}"
run="$root/runs/quickstart-three"
report="$root/reports/quickstart-three"
again=()
[ -f "$run/train_config.json" ] && again=(--resume)  # finished: returns at once; killed: continues
.venv/bin/erase train --forget default/classes/three-forget --output "$run" "${again[@]}"
.venv/bin/erase eval "$run" --output "$report"
echo "open $report/report.html in a browser: the scores, base-vs-erased grids and training curves"

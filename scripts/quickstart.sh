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
erase_three() { .venv/bin/erase train --forget default/classes/three-forget --output "$run" "$@"; }
if [ ! -f "$run/train_config.json" ]; then
  erase_three
else  # finished: returns at once; killed: continues
  status=0
  erase_three --resume || status=$?
  if [ "$status" = 2 ]; then  # made by an earlier version under other defaults: this script's own run, made again
    echo "quickstart: $run was made under other defaults (above); erasing three again into it" >&2
    erase_three --overwrite
  elif [ "$status" != 0 ]; then
    exit "$status"
  fi
fi
# --overwrite: the report folder is this script's own, and images of a run made again in place
# (deleted and erased anew, or a killed run continued) are drawn again; unchanged ones are kept.
.venv/bin/erase eval "$run" --output "$report" --overwrite
echo "open $report/report.html in a browser: the scores, base-vs-erased grids and training curves"

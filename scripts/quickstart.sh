#!/usr/bin/env bash
# Set up (idempotent), then run the main job on the embedded default model: draw every prompt
# of the shipped digit list and a contact sheet of the results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/erase generate --model default --prompts default/digits --output outputs/quickstart --grid --grid-columns 10 "$@"

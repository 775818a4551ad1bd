#!/usr/bin/env bash
# Set up (idempotent, with test extras), lint, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# The HTML report's test opens it in a real browser: install Debian's Chromium where we may
# (root with apt-get); elsewhere that one test skips and says how to run it.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing Chromium for the browser test (apt-get install chromium)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
        || (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1) \
        || echo "test: Chromium could not be installed; the browser test will skip" >&2
fi
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Create .venv and install the toolkit (editable) with the CPU pins. Idempotent: a second run
# with unchanged pyproject.toml/constraints-cpu.txt returns at once.
#   bash scripts/setup.sh          # the toolkit
#   bash scripts/setup.sh test     # plus pytest and ruff
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "setup: error: $python is not Python ≥ 3.10; set PYTHON=/path/to/python3.11" >&2
    exit 2
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
hash="$(cat pyproject.toml constraints-cpu.txt | sha256sum | cut -c1-16)"
stamp=".venv/.setup-$hash-${extras:-base}"
if [ -f "$stamp" ] || { [ -z "$extras" ] && compgen -G ".venv/.setup-$hash-*" >/dev/null; }; then
    exit 0  # done already (any extras include the toolkit itself)
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
echo "setup: installing into .venv (first time: a few minutes; torch is large)" >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-cpu.txt -e "$spec"
rm -f .venv/.setup-*
touch "$stamp"
echo "setup: ready (.venv/bin/erase)" >&2

#!/usr/bin/env bash
# Mutation run over the core computations (issue 18): mutmut plants small bugs, one at a time,
# in erase/losses.py, erase/balancers/, erase/mask.py and eval/metrics/, and runs the fast unit
# tests that cover each; a mutant no test notices is a "survivor". Not part of the default test
# run (about 8 minutes on 2 cores). The modules and tests are set in pyproject.toml [tool.mutmut].
#   bash scripts/mutation.sh          # run, then print the score and every survivor's diff
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh mutation
rm -rf mutants  # mutmut's working copy of the sources; a stale one would be reused
# One thread per worker: torch's thread pool does not survive mutmut's forks.
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/mutmut run --max-children "${JOBS:-2}" > mutants.log 2>&1 || true
.venv/bin/mutmut results --all true > mutants/results.txt
.venv/bin/python - <<'PY'
import collections, pathlib, subprocess
lines = [l.strip() for l in pathlib.Path("mutants/results.txt").read_text().splitlines() if ": " in l]
status = collections.Counter(l.rsplit(": ", 1)[1] for l in lines)
total = sum(status.values())
caught = status["killed"] + status["timeout"]
print(f"mutants: {total}  " + "  ".join(f"{k}: {v}" for k, v in sorted(status.items())))
print(f"score: {caught}/{total} = {100 * caught / total:.1f}% killed (a timeout counts: the bug hung the tests)")
for line in lines:
    name, result = line.rsplit(": ", 1)
    if result not in ("killed", "timeout"):
        diff = subprocess.run([".venv/bin/mutmut", "show", name], capture_output=True, text=True).stdout
        changed = [d for d in diff.splitlines() if d[:1] in "+-" and d[:3] not in ("+++", "---")]
        print(f"\n{result}: {name}\n  " + "\n  ".join(changed))
PY

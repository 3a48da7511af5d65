#!/usr/bin/env bash
# Check and measure m3ae on one CUDA GPU in under 10 minutes: runs `python -m m3ae.cli gpu-check`
# (see `scripts/gpu_check.sh --help`) with this checkout's m3ae, so nothing needs installing.
#
# A GPU machine may be offline and may not have this project's virtual environment, so no
# environment is built here: the script uses the first Python that has what m3ae needs, in this
# order: $M3AE_PYTHON, the checkout's .venv, python3. Results go to --out, else $OUT, else
# runs/gpu_check (gpu_check.json and gpu_check.md).
#
#   scripts/gpu_check.sh                      # every check, 9-minute budget
#   scripts/gpu_check.sh --only parity ddp    # some checks
#   M3AE_PYTHON=/opt/conda/bin/python scripts/gpu_check.sh --budget-minutes 5
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NEEDED="torch transformers safetensors numpy yaml"  # what `import m3ae.models` and the training loop import

missing_in() {  # prints the modules of $NEEDED that Python $1 cannot import
    "$1" -c "
import importlib.util, sys
print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))" $NEEDED 2>/dev/null \
        || echo "(python does not run)"
}

choose_python() {  # the first candidate with nothing missing; else report each one's gaps
    local candidates=() py missing report=""
    [[ -n "${M3AE_PYTHON:-}" ]] && candidates+=("$M3AE_PYTHON")
    [[ -x "$ROOT/.venv/bin/python" ]] && candidates+=("$ROOT/.venv/bin/python")
    command -v python3 >/dev/null && candidates+=("$(command -v python3)")
    for py in "${candidates[@]}"; do
        missing="$(missing_in "$py")"
        [[ -z "$missing" ]] && { echo "$py"; return 0; }
        report+="  $py: missing $missing"$'\n'
    done
    echo "gpu_check.sh: no Python with ${NEEDED// /, } found (set M3AE_PYTHON to one):" >&2
    printf '%s' "${report:-  no python3 on PATH}"$'\n' >&2
    return 1
}

if ! PY="$(choose_python)"; then
    # the results folder still says why, since it may be all that comes back from the machine
    out="${OUT:-$ROOT/runs/gpu_check}"
    mkdir -p "$out"
    printf '{"checks": [{"name": "python", "ok": false, "seconds": 0.0, "numbers": {}, "error": "no Python with %s (set M3AE_PYTHON)"}]}\n' \
        "$NEEDED" > "$out/gpu_check.json"
    printf '| check | result | seconds | numbers | error |\n|---|---|---:|---|---|\n| python | **failed** | 0.0 |  | no Python with %s (set M3AE_PYTHON) |\n' \
        "$NEEDED" > "$out/gpu_check.md"
    exit 2
fi
echo "gpu_check.sh: using $PY" >&2
cd "$ROOT" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m m3ae.cli gpu-check "$@"

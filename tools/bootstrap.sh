#!/usr/bin/env bash
# Create .venv (Python 3.11) and install Veil with everything it needs, from this repo's files.
#   - torch: an existing CUDA build of the system Python is kept (venv with system site-packages);
#     otherwise torch==2.13.0 is installed (the local CPU wheel on machines without a GPU).
#   - crypten 0.4.1 with --no-deps (its metadata pulls a CUDA torch and the dead `sklearn`).
#   - Veil itself, editable, with all extras; torch pinned to what is installed so pip never
#     replaces it.
# Finally tools/check_env.py verifies that no CUDA wheels, torchvision, tensorboard or sklearn
# slipped in, and that `pip check` finds no conflict but crypten's deliberately missing extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

find_python() {
  for cand in "${PYTHON:-}" python3.11 python3; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 && \
       "$cand" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PY=$(find_python) || { echo "error: Python 3.11 not found; install it or set PYTHON=/path/to/python3.11" >&2; exit 2; }
  if "$PY" -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
    echo "bootstrap: keeping the CUDA torch of $PY (venv with system site-packages)"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  echo "bootstrap: installing torch (requirements/torch-cpu.txt)"
  "${PIP[@]}" install -q -r requirements/torch-cpu.txt
fi
TORCH_VERSION=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
echo "torch==${TORCH_VERSION}" > "$VENV/constraints.txt"

"${PIP[@]}" install -q --no-deps -r requirements/crypten.txt
# --no-warn-conflicts: pip would print "ERROR: pip's dependency resolver ... crypten 0.4.1
# requires sklearn, which is not installed" for the requirements left out above on purpose;
# tools/check_env.py runs `pip check` itself and fails on any other conflict.
"${PIP[@]}" install -q --no-warn-conflicts -c "$VENV/constraints.txt" -e ".[all,dev]"
"$VENV/bin/python" tools/check_env.py

#!/usr/bin/env bash
# Issue 23's device check in one command, for a lent CUDA machine (budget: 8 minutes on an H100/H200):
#
#   bash bench/gpu_check.sh [OUT_DIR] [gpu_check.py options...]
#
# Runs bench/gpu_check.py (its docstring lists the rows and their rules) under a time limit of CHECK_TIMEOUT
# seconds (default 470). Every row is printed as it finishes and kept in OUT_DIR (default $OUT, else .):
# gpu_check_rows.jsonl as it goes, gpu_check_summary.md and the whole log gpu_check.log at the end. At the limit the
# driver is sent SIGTERM: it marks the steps left as NOT RUN and still prints the summary table. The exit status is
# non-zero if any row failed or was not run.
#
# Needs the project's Python packages importable by $PYTHON (default python3); the driver names any that are
# missing within seconds. WHEEL_DIR, when set, is a folder made by bench/gpu_check_wheels.sh, installed first into a
# scratch site folder (for a machine that cannot reach a package index). A machine without espeak-ng needs
# NEUCODEC_CACHE_DIR holding e2e-utterances-v1/, made elsewhere with `bench/gpu_check.py --speech-only` (a few MB);
# the random model is built into NEUCODEC_CACHE_DIR on first use (untimed).
set -uo pipefail
PYTHON=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-.}}
shift $(( $# > 0 ? 1 : 0 ))
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
export PYTHONUNBUFFERED=1
if [ -n "${WHEEL_DIR:-}" ]; then  # made by bench/gpu_check_wheels.sh: wheels, and site trees as .site.tar.xz
    site=${WHEEL_SITE:-/tmp/gpu-check-site}
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$WHEEL_DIR"/*.whl || { echo "installing the wheels of $WHEEL_DIR failed" | tee "$LOG"; exit 1; }
    unpack='import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")'
    for tree in "$WHEEL_DIR"/*.site.tar.xz; do
        [ -e "$tree" ] || continue
        "$PYTHON" -c "$unpack" "$tree" "$site" || { echo "unpacking $tree failed" | tee "$LOG"; exit 1; }
    done
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
{ nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>&1 || true; } | tee -a "$LOG"
timeout -k 20 "${CHECK_TIMEOUT:-470}" "$PYTHON" bench/gpu_check.py --out "$OUT_DIR" "$@" 2>&1 \
    | grep --line-buffered -v "Loading weights" | tee -a "$LOG"
status=${PIPESTATUS[0]}
[ "$status" -eq 124 ] && echo "gpu_check.sh: stopped at the ${CHECK_TIMEOUT:-470} s limit" | tee -a "$LOG"
exit "$status"

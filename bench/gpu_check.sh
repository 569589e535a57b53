#!/usr/bin/env bash
# Issue 13's device check, in one go (budget: 8 minutes on an H100/H200):
#   1. the encoder tests on CUDA (exactness against the package, edges, the fast paths' CPU forms run on the GPU);
#   2. the throughput bench for every precision and fast path against one reference pass (token agreement with
#      the package and with our fp32, relative error of the pre-quantization latent);
#   3. a generated 1-hour shard (44.1/48 kHz stereo FLAC, espeak-ng speech) through read_shard + encode + tokens
#      file: pure-encode time, end-to-end time and their ratio, GPU memory and busy share.
#
#   bash bench/gpu_check.sh [LOG_DIR]
#
# Needs the project's Python dependencies importable by $PYTHON (default python3) and espeak-ng, or a
# $NEUCODEC_CACHE_DIR already holding the synthesized clips and the shard. The random model is built into
# $NEUCODEC_CACHE_DIR on first use. The tests load only the model fixtures (no Dagster, Postgres or S3 needed).
# Each step has its own timeout (TEST_TIMEOUT, BENCH_TIMEOUT, E2E_TIMEOUT seconds); a failing step does not stop
# the next, and the exit status is non-zero if any failed.
set -uo pipefail
PYTHON=${PYTHON:-python3}
LOG_DIR=${1:-.}
mkdir -p "$LOG_DIR"
start=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - start )) s since start)"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

stamp "encoder tests on CUDA"
NEUCODEC_TEST_DEVICE=cuda timeout "${TEST_TIMEOUT:-150}" "$PYTHON" -m pytest -q -rA --noconftest -p tests.fixtures.model \
    -p no:cacheprovider tests/test_encoder_exact.py tests/test_encoder_edges.py tests/test_encoder_loading.py \
    tests/test_encoder_fastpaths.py 2>&1 | tee "$LOG_DIR/gpu_tests.log" | tail -30
tests_status=$?

stamp "throughput per precision"
timeout "${BENCH_TIMEOUT:-170}" "$PYTHON" bench/encode_bench.py --device cuda \
    --precision "${BENCH_PRECISIONS:-fp32,tf32,bf16,fp16,bf16+graphs,bf16+graphs+overlap}" \
    --seconds "${BENCH_SECONDS:-300}" 2>&1 | grep -v "Loading weights" | tee "$LOG_DIR/gpu_bench.log" | tail -25
bench_status=$?

stamp "one shard end to end"
timeout "${E2E_TIMEOUT:-150}" "$PYTHON" bench/e2e_shard.py --device cuda --hours "${E2E_HOURS:-1}" \
    --precision "${E2E_PRECISION:-bf16}" --graphs "${E2E_GRAPHS:-cuda}" ${E2E_OVERLAP:---overlap} 2>&1 \
    | grep -v "Loading weights" | tee "$LOG_DIR/gpu_e2e.log" | tail -20
e2e_status=$?
stamp "done"
exit $(( tests_status || bench_status || e2e_status ))

#!/usr/bin/env bash
# On a CUDA machine: the encoder's exactness tests on the GPU, then the benchmark in each precision (fp32 with and
# without the fused activation kernel).
#
#   bash bench/gpu_check.sh [LOG_DIR]
#
# Needs the project's Python dependencies importable by $PYTHON (default python3) and espeak-ng, or a
# $NEUCODEC_CACHE_DIR/speech-v1 folder already holding the synthesized clips. The random model is built into
# $NEUCODEC_CACHE_DIR on first use. The tests load only the model fixtures (no Dagster, Postgres or S3 needed).
set -uo pipefail
PYTHON=${PYTHON:-python3}
LOG_DIR=${1:-.}
mkdir -p "$LOG_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
NEUCODEC_TEST_DEVICE=cuda timeout "${TEST_TIMEOUT:-400}" "$PYTHON" -m pytest -q -rA --noconftest -p tests.fixtures.model \
    -p no:cacheprovider tests/test_encoder_exact.py tests/test_encoder_edges.py tests/test_encoder_loading.py 2>&1 \
    | tee "$LOG_DIR/gpu_tests.log" | tail -40
tests_status=$?
timeout "${BENCH_TIMEOUT:-400}" "$PYTHON" bench/encode_bench.py --device cuda --precision "${BENCH_PRECISIONS:-fp32,fp32+fused,bf16,fp16}" \
    --seconds "${BENCH_SECONDS:-480}" 2>&1 | grep -v "Loading weights" | tee "$LOG_DIR/gpu_bench.log" | tail -25
bench_status=$?
exit $(( tests_status || bench_status ))

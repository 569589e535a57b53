#!/usr/bin/env bash
# Fetch here, into DIR (default .whl), the packages of bench/gpu_check_wheels.txt for the lent GPU machine (CPython
# 3.12, x86-64, no package index there). polars' runtime (54 MB as a wheel) is repacked as an xz tarball of its
# files (about 33 MB), so that all of them (about 45 MB) travel within the device tool's 64 MiB. Then carry DIR and
# run there: WHEEL_DIR=DIR bash bench/gpu_check.sh "$OUT"
set -euo pipefail
DIR=${1:-.whl}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$DIR"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DIR" -r bench/gpu_check_wheels.txt
for whl in "$DIR"/polars_runtime*.whl; do
    [ -e "$whl" ] || continue
    files=$(mktemp -d)
    "$PYTHON" -m zipfile -e "$whl" "$files"
    tar -C "$files" -cf - . | xz -T0 -6 > "${whl%.whl}.site.tar.xz"
    rm -rf "$files" "$whl"
done
du -sh "$DIR"

#!/usr/bin/env bash
# Run benchmarks/gpu.py on a lent GPU machine, the table to $OUT.
#
# Here, once, in the repository root (a machine with pip and the internet): fetch the two peers
# as wheels into .whl/ (ignored by git: .gitignore has /.whl/), dropping the 45 MB example
# model inside pyautoattack's wheel so that the carry stays far under its 64 MiB:
#     bash benchmarks/gpu_device.sh fetch
# There (the device tool's run, carry [".whl"], timeout_s 480):
#     bash benchmarks/gpu_device.sh [gpu.py options]
# It installs the wheels into /tmp/site, runs gpu.py --device cuda under `timeout` (default 420 s,
# GPU_BENCH_TIMEOUT) and writes gpu_bench.{md,json,csv,log} to $OUT (else out/gpu). gpu.py
# writes its table after every row, so a run cut short still leaves the rows it finished.
set -uo pipefail

if [ "${1:-}" = fetch ]; then
    set -e
    mkdir -p .whl
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl torchattacks==3.5.1 pyautoattack==0.2.0
    slim=$(mktemp -d)
    (cd "$slim" && python3 -m zipfile -e "$OLDPWD/.whl/pyautoattack-0.2.0-py3-none-any.whl" . \
        && rm -f pyautoattack/examples/model_test.pt pyautoattack/examples/tf_model.weight.h5 \
        && grep -v 'examples/model_test.pt\|examples/tf_model.weight.h5' \
            pyautoattack-0.2.0.dist-info/RECORD > RECORD.slim \
        && mv RECORD.slim pyautoattack-0.2.0.dist-info/RECORD \
        && rm "$OLDPWD/.whl/pyautoattack-0.2.0-py3-none-any.whl" \
        && python3 -m zipfile -c "$OLDPWD/.whl/pyautoattack-0.2.0-py3-none-any.whl" ./*)
    rm -rf "$slim"
    du -ch .whl/*.whl
    exit 0
fi

out=${OUT:-out/gpu}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "cannot install the wheels in .whl/"; exit 1; }
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout "${GPU_BENCH_TIMEOUT:-420}" python3 benchmarks/gpu.py --device cuda --out "$out" "$@" \
    2>&1 | tee "$out/gpu_bench.log"

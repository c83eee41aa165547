#!/usr/bin/env bash
# Everything GPU-bound, in one go, on a CUDA machine with torch (no Ray, fsspec or Click needed):
# the `gpu` tests, then the benchmarks, each under its own time limit so the whole session ends
# in about 9 minutes. Results go to $OUT (default benchmarks/results), the log to $OUT/session.log.
#
#   OUT=/tmp/out bash benchmarks/gpu_session.sh
#
# The data must be at ../shared/data (the benchmarks read the paper's images there); DIP_DATA
# names another folder laid out the same way, linked there first.
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -n "${DIP_DATA:-}" ] && [ ! -e ../shared/data ]; then
    mkdir -p ../shared && ln -s "$(cd "$DIP_DATA" && pwd)" ../shared/data
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0], torch.cuda.get_device_name())"
step() { local limit=$1; shift; echo "=== $* (limit ${limit}s) $(date -u +%T)"; timeout "$limit" "$@"; echo "=== exit $? $(date -u +%T)"; }

# conftest.py needs the S3 test server's client (botocore): the gpu tests need none of it.
step 110 $PY -m pytest --noconftest -p no:cacheprovider -o addopts="" -m gpu -q -ra tests/test_engine.py
step 170 $PY benchmarks/fit_speed.py --iterations 600 --ablation-iterations 300 --output "$OUT"
step 110 $PY benchmarks/packing_speed.py --packs 8,4 --output "$OUT"
step 140 $PY benchmarks/early_stop_savings.py --time-budget 120 --output "$OUT"

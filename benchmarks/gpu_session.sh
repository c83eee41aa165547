#!/usr/bin/env bash
# Everything GPU-bound, in one go, on a CUDA machine with torch (no Ray, fsspec or Click needed):
# the `gpu` tests, then the benchmarks, each under its own time limit. Run it from the checkout's
# root. STEPS picks and orders them (default: tests profile layers pack speed, about 12 minutes:
# more than one call may run, so pick):
#   tests      the `gpu` tests of the engine                                    ~100 s
#   profile    benchmarks.profile_step: where a fast iteration spends its time  ~100 s
#   profile-align  the same with align_channels=8                              ~100 s
#   layers     benchmarks.layer_speed: each layer kind alone, bf16 and fp32      ~40 s
#   pack       benchmarks.packing_speed, packs of 8 and 4                        ~200 s
#   speed      benchmarks.fit_speed with its ablations (ABLATIONS picks them)    ~300 s
#   stoprules  benchmarks.stop_rules: every stopping rule on the full-size denoising suite, 3000
#              iterations, replayed from recorded fits (STOP_IMAGES=F16,... picks images)  ~400 s
#   paper      benchmarks.paper_tables: Set5 x4, the denoising suite, barbara at 50% (PAPER_SUITES
#              picks, e.g. "set5-x4 barbara-50")                                 PAPER_LIMIT s (default 540)
#   archive    benchmarks.archive: archive against denoise at full size, the paper's network, 3000
#              iterations (ARCHIVE_IMAGES=F16,... picks images; default three)   ~450 s
# Results go to $OUT/<benchmark>/<device>.json (default OUT: benchmarks/results), laid out as
# benchmarks/results is: copy them there. The log goes to $OUT/gpu_session.log (to gpu_session.log
# in the checkout's root when OUT is benchmarks/results, which holds only results files).
#
#   OUT=/tmp/out STEPS="tests profile layers" bash benchmarks/gpu_session.sh
#
# With one 15-minute lease (a machine start takes a minute or two), two calls fit, e.g.
#   STEPS="profile layers pack"                                 (~6 min)
#   STEPS="tests speed" ABLATIONS=2nd-fit,size+32,size+64,align (~7 min)
#
# Each results file names the commit it ran at (`git rev-parse HEAD`); on a copy of the tree that is
# not a git checkout, set DIP_COMMIT to the commit it was copied from (with -dirty if it had changes).
#
# SMOKE=1 runs every step on the CPU with tiny sizes and iterations, into a fresh temporary OUT:
# it checks that each step runs, and measures nothing (`SMOKE=1 bash benchmarks/gpu_session.sh`).
#
# The data must be at ../shared/data (the benchmarks read the paper's images there); DIP_DATA
# names another folder laid out the same way, linked there first.
set -u
if [ -n "${SMOKE:-}" ]; then
    OUT=${OUT:-$(mktemp -d -t gpu_session_smoke.XXXXXX)}
    STEPS=${STEPS:-tests profile profile-align layers pack speed stoprules paper archive}
else
    OUT=${OUT:-benchmarks/results}
fi
mkdir -p "$OUT"
if [ "$OUT" = benchmarks/results ]; then LOG=gpu_session.log; else LOG="$OUT/gpu_session.log"; fi
exec > >(tee "$LOG") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -n "${DIP_DATA:-}" ] && [ ! -e ../shared/data ]; then
    mkdir -p ../shared && ln -s "$(cd "$DIP_DATA" && pwd)" ../shared/data
fi
step() { local limit=$1; shift; echo "=== $* (limit ${limit}s) $(date -u +%T)"; timeout "$limit" "$@"; echo "=== exit $? $(date -u +%T)"; }

PAPER_LIMIT=${PAPER_LIMIT:-540}
if [ -n "${SMOKE:-}" ]; then  # each step tiny, on the CPU
    echo "smoke run on the CPU: results in $OUT, nothing measured"
    PROFILE="--device cpu --size 32 --warmup 2 --iterations 2"
    LAYERS="--device cpu --size 16 --min-run-time 0.01"
    PACK="--device cpu --size 32 --iterations 10 --packs 2"
    SPEED="--device cpu --size 32 --iterations 10"
    STOP="--preset cpu-small --size 32 --iterations 20 --device cpu --images F16"
    PAPER="--device cpu --suite set5-x4 --limit 1 --iterations 2 --no-tv"
    ARCHIVE="--parts fits --preset cpu-small --size 32 --iterations 20 --device cpu --workers 1 --images F16"
else
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    PROFILE=""
    LAYERS=""
    PACK="--packs 8,4"
    SPEED="--iterations 600 --ablation-iterations 300 --ablations ${ABLATIONS:-2nd-fit,size+32,size+64,align,no-compile,no-graphs,no-bf16}"
    STOP="--preset denoise --size 0 --iterations 3000 --device cuda ${STOP_IMAGES:+--images $STOP_IMAGES}"
    PAPER="--time-budget $((PAPER_LIMIT - 20)) $(for s in ${PAPER_SUITES:-}; do printf -- '--suite %s ' "$s"; done)"
    ARCHIVE="--parts fits --preset archive --size 0 --iterations 3000 --device cuda --workers 1 --images ${ARCHIVE_IMAGES:-F16,kodim03,peppers}"
fi
$PY -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0], torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
# The core's noise estimate of small images uses scikit-image's estimate_sigma, which needs PyWavelets;
# the H200 image lacked it (2026-12-04): carry its wheel (the device README's notes say how).
$PY -c "import pywt" 2>/dev/null || echo "WARNING: PyWavelets is missing: noise estimates of small images will fail"
for name in ${STEPS:-tests profile layers pack speed}; do
    case $name in
        # conftest.py needs the S3 test server's client (botocore): the gpu tests need none of it.
        tests) step 110 $PY -m pytest --noconftest -p no:cacheprovider -o addopts="" -m gpu -q -ra tests/core/test_engine.py ;;
        profile) step 120 $PY -m benchmarks.profile_step $PROFILE --results-dir "$OUT" ;;
        profile-align) step 120 $PY -m benchmarks.profile_step $PROFILE --align-channels 8 --results-dir "$OUT" ;;
        layers) step 90 $PY -m benchmarks.layer_speed $LAYERS --results-dir "$OUT" ;;
        pack) step 220 $PY -m benchmarks.packing_speed $PACK --results-dir "$OUT" ;;
        speed) step 300 $PY -m benchmarks.fit_speed $SPEED --results-dir "$OUT" ;;
        stoprules) step 420 $PY -m benchmarks.stop_rules $STOP --results-dir "$OUT" ;;
        paper) step "$PAPER_LIMIT" $PY -m benchmarks.paper_tables $PAPER --results-dir "$OUT" ;;
        archive) step 480 $PY -m benchmarks.archive $ARCHIVE --results-dir "$OUT" ;;
        *) echo "unknown step $name (expected tests, profile, profile-align, layers, pack, speed, stoprules, paper, archive)"; exit 2 ;;
    esac
done
echo "results in $OUT, log in $LOG"

#!/usr/bin/env bash
# Everything GPU-bound, in one go, on a CUDA machine with torch (no Ray, fsspec or Click needed):
# the `gpu` tests, then the benchmarks, each under its own time limit. STEPS picks and orders
# them (default: every step but profile-align, about 17 minutes: more than one call may run, so pick):
#   tests    the `gpu` tests of the engine                                  ~100 s
#   profile  profile_step.py: where a fast iteration spends its time        ~100 s
#   profile-align  profile_step.py with align_channels=8                   ~100 s
#   layers   layer_speed.py: each layer kind alone, bf16 and fp32            ~40 s
#   es       early_stop_savings.py on the denoising suite (time-boxed)      ES_LIMIT s (default 300);
#            ES_IMAGES=F16,baboon,... picks images
#   pack     packing_speed.py, packs of 8 and 4                             ~200 s
#   speed    fit_speed.py with its ablations (ABLATIONS picks them)         ~300 s
#   stoprules  stop_rules.py: every stopping rule on the full-size denoising suite, 3000 iterations,
#            replayed from recorded fits (STOP_IMAGES=F16,... picks images)   ~400 s
#   paper    paper_tables.py: Set5 x4, the denoising suite, barbara at 50% (PAPER_SUITES picks,
#            e.g. "set5-x4 barbara-50")                                     PAPER_LIMIT s (default 540)
#   archive  archive.py: archive against denoise at full size, the paper's network, 3000 iterations
#            (ARCHIVE_IMAGES=F16,... picks images; default three)                ~450 s
#   warm     iterations_to_quality.py: tiles of 256 px of two 512 px crops, 3000 iterations, cold
#            against the WARM_START chain (default shrink; or neighbour)            ~400 s (estimated)
# Results go to $OUT (default benchmarks/results), the log to $OUT/session.log.
#
#   OUT=/tmp/out STEPS="tests profile es" bash benchmarks/gpu_session.sh
#
# With one 15-minute lease (a machine start takes a minute or two), two calls fit, e.g.
#   STEPS="profile layers es" ES_LIMIT=240                      (~6.5 min)
#   STEPS="tests speed" ABLATIONS=2nd-fit,size+32,size+64,align (~5 min)
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
TAG=$($PY -c 'import torch; print(torch.cuda.get_device_name().lower().replace(" ", "-"))')  # results' file names
step() { local limit=$1; shift; echo "=== $* (limit ${limit}s) $(date -u +%T)"; timeout "$limit" "$@"; echo "=== exit $? $(date -u +%T)"; }

ES_LIMIT=${ES_LIMIT:-300}
PAPER_LIMIT=${PAPER_LIMIT:-540}
# The core's noise estimate falls back to scikit-image's estimate_sigma, which needs PyWavelets; the
# H200 image lacks it (2026-12-04): carry its wheel (the device README's notes say how).
$PY -c "import pywt" 2>/dev/null || echo "WARNING: PyWavelets is missing: noise estimates of small images will fail"
for name in ${STEPS:-tests profile layers es pack speed}; do
    case $name in
        # conftest.py needs the S3 test server's client (botocore): the gpu tests need none of it.
        tests) step 110 $PY -m pytest --noconftest -p no:cacheprovider -o addopts="" -m gpu -q -ra tests/core/test_engine.py ;;
        profile) step 120 $PY benchmarks/profile_step.py --output "$OUT" ;;
        profile-align) step 120 $PY benchmarks/profile_step.py --align-channels 8 --output "$OUT" ;;
        layers) step 90 $PY benchmarks/layer_speed.py --output "$OUT" ;;
        es) step "$ES_LIMIT" $PY benchmarks/early_stop_savings.py --time-budget "$((ES_LIMIT - 30))" \
                ${ES_IMAGES:+--images "$ES_IMAGES"} --output "$OUT" ;;
        pack) step 220 $PY benchmarks/packing_speed.py --packs 8,4 --output "$OUT" ;;
        speed) step 300 $PY benchmarks/fit_speed.py --iterations 600 --ablation-iterations 300 \
                   --ablations "${ABLATIONS:-2nd-fit,size+32,size+64,align,no-compile,no-graphs,no-bf16}" --output "$OUT" ;;
        stoprules) step 420 $PY benchmarks/stop_rules.py --preset denoise --size 0 --iterations 3000 --device cuda \
                       ${STOP_IMAGES:+--images "$STOP_IMAGES"} \
                       --out "$OUT/stop_rules_denoise_full_${TAG}.json" ;;
        paper) step "$PAPER_LIMIT" $PY benchmarks/paper_tables.py --time-budget "$((PAPER_LIMIT - 20))" \
                   $(for s in ${PAPER_SUITES:-}; do printf -- '--suite %s ' "$s"; done) \
                   --out "$OUT/paper_tables_${TAG}.json" ;;
        archive) step 480 $PY benchmarks/archive.py --parts fits --preset archive --size 0 --iterations 3000 \
                     --device cuda --workers 1 --images "${ARCHIVE_IMAGES:-F16,kodim03,peppers}" \
                     --out "$OUT/archive_archive_full_${TAG}.json" ;;
        warm) step 480 $PY benchmarks/iterations_to_quality.py --settings tiles --device cuda --workers 1 \
                  --crop 512 --tile 256 --budget 3000 --tile-start "${WARM_START:-shrink}" \
                  --out "$OUT/iterations_to_quality_${TAG}_${WARM_START:-shrink}.json" ;;
        *) echo "unknown step $name (expected tests, profile, profile-align, layers, es, pack, speed, stoprules, paper, archive, warm)"; exit 2 ;;
    esac
done

#!/usr/bin/env bash
# The GPU checks of issue 23 in one call (under 8 minutes on one H100): run from the repository root on
# a machine with a CUDA GPU, e.g. a lent device machine.
#
#   bash benchmarks/gpu.sh            # results under $OUT (default: gpu-out/)
#   GPU_SH_CPU=1 bash benchmarks/gpu.sh   # the same steps on the CPU, tiny: checks the script itself
#
# What it does, each step logged to $OUT/gpu.log:
#   1. records the device (torch.cuda.get_device_name, nvidia-smi) in $OUT/device.txt;
#   2. the tests that run only with CUDA (the skipif(not torch.cuda.is_available()) ones, in the files
#      that name cuda) and the bfloat16 autocast checks on CUDA (tests/training/test_precision.py);
#   3. benchmarks/train_speed.py --device cuda: TopK at 4,608, 16,384 and 65,536 latents, saekit against
#      sparsify (its Triton decode when triton is importable; the record says which) and SAELens, on the
#      same GPU, interleaved; results in $OUT/gpu-results.json, each record carrying the GPU's name and the CPU's
#      ("machine"). dictionary_learning is left out to fit the time.
#
# Python and torch: the machine's own (python3 with a CUDA torch) when it has one, since a venv built
# on the CPU-only development machine has a CPU torch. The peers cannot be downloaded there (no
# network): carry a wheelhouse of them, built here with
#   pip download --no-deps -d .wheelhouse eai-sparsify sae-lens dictionary-learning natsort schedulefree \
#       simple-parsing einops transformer-lens pytest hypothesis   # and whatever else the machine lacks
# and name it in WHEELHOUSE (default .wheelhouse). They are installed with --no-deps into a venv that
# sees the machine's packages (--system-site-packages), so torch is never replaced. A peer that still
# fails to import is reported and left out; saekit itself runs from this checkout (PYTHONPATH).
#
# Activations: synthetic Gaussian rows (--synthetic): the embedded model and its harvest are too large
# to carry. The speeds are comparable across libraries (the same rows for all); the FVUs are not those
# of real activations.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu-out}"
WHEELHOUSE="${WHEELHOUSE:-$ROOT/.wheelhouse}"
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
: > "$LOG"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# --- Python with torch -----------------------------------------------------------------------------
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    for candidate in python3 python "$ROOT/.venv/bin/python"; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" >/dev/null 2>&1; then
            PY="$(command -v "$candidate")"
            break
        fi
    done
fi
if [ -z "$PY" ]; then
    log "no python with torch found (set PYTHON=...)"
    exit 1
fi
DEVICE=cuda
if [ "${GPU_SH_CPU:-0}" = 1 ]; then
    DEVICE=cpu
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    log "$PY: torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device; GPU_SH_CPU=1 runs the CPU check of this script"
    exit 1
fi
log "python $PY, torch $("$PY" -c 'import torch; print(torch.__version__)'), device $DEVICE"

# --- the peers, offline, without touching torch ---------------------------------------------------------
VENV="$OUT/venv"
if [ -d "$WHEELHOUSE" ]; then
    "$PY" -m venv --system-site-packages "$VENV" && PY="$VENV/bin/python"
    "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELHOUSE" "$WHEELHOUSE"/*.whl 2>&1 | tail -3 | tee -a "$LOG"
else
    log "no wheelhouse at $WHEELHOUSE: the peers already installed for $PY are used"
fi
LIBS=saekit
for pair in sparsify:sparsify sae_lens:sae_lens; do
    lib="${pair%%:*}"; module="${pair##*:}"
    if "$PY" -c "import $module" >/dev/null 2>&1; then
        LIBS="$LIBS,$lib"
    else
        log "$lib: cannot import $module here; left out"
    fi
done
TRITON=$("$PY" -c "import triton; print(triton.__version__)" 2>/dev/null || echo "not installed")
log "libraries: $LIBS; triton: $TRITON"

# --- 1. the device --------------------------------------------------------------------------------------
{
    "$PY" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
} > "$OUT/device.txt"
log "device: $(head -1 "$OUT/device.txt")"

# --- 2. CUDA tests and the bfloat16 checks --------------------------------------------------------------
mapfile -t CUDA_TESTS < <(grep -rl "cuda" tests --include='test_*.py' | sort)
log "tests: ${#CUDA_TESTS[@]} files that name cuda, bfloat16 checks included"
# A file whose imports are missing here (hypothesis, say) is reported and the others still run.
timeout 180 "$PY" -m pytest -q -m "" -rs -p no:cacheprovider --continue-on-collection-errors "${CUDA_TESTS[@]}" > "$OUT/pytest.log" 2>&1
log "pytest exit $? ($(tail -1 "$OUT/pytest.log"))"

# --- 3. speed against the peers ---------------------------------------------------------------------------
if [ "$DEVICE" = cuda ]; then
    SPEED=(--cases topk-4608,topk-16384,topk-65536 --steps 32 --repeats 2)
else
    SPEED=(--cases topk-4608 --steps 5 --repeats 1)
fi
timeout 300 "$PY" benchmarks/train_speed.py --device "$DEVICE" --synthetic --no-suite "${SPEED[@]}" \
    --libraries "$LIBS" --work "$OUT/bench-cache" --out "$OUT/gpu-results.json" > "$OUT/train_speed.log" 2>&1
log "train_speed exit $?"
tail -12 "$OUT/train_speed.log" | tee -a "$LOG"

#!/usr/bin/env bash
# Train the two shipped MNIST models (unconditional and class-conditional) at the same time on
# ONE GPU, each for a wall-clock budget, then export their EMA weights with model-card metadata.
#
# Usage (from the repository root, on a machine with a CUDA GPU; outputs go under $OUT):
#   OUT=/some/dir bash scripts/gpu_train.sh
# Environment overrides (for a quick CPU check use GPU_TRAIN_MINUTES=0.3 GPU_TRAIN_BATCH=32):
#   GPU_TRAIN_MINUTES  time limit of each training run, minutes (default 4.5)
#   GPU_TRAIN_STEPS    step cap (default 1000000: the time limit decides)
#   GPU_TRAIN_BATCH    batch size (default 256)
#   GPU_TRAIN_LR       learning rate (default 4e-4)
#   GPU_TRAIN_SAMPLE_EVERY  sample-grid interval in steps (default 2000)
#   MNIST_TARBALL      MNIST raw files as .tar.gz, unpacked into a scratch folder; without it
#                      MNIST comes from the package's data root (DIFFUSION_TUTORIAL_DATA)
#   PYTHON             interpreter (default python3)
#
# Outputs:
#   $OUT/weights/mnist.safetensors, $OUT/weights/mnist-cond.safetensors   EMA weights + metadata
#   $OUT/mnist_samples.png, $OUT/mnist-cond_samples.png                    final sample grids
#   $OUT/results.tar.gz   logs, loss.csv curves, every sample grid, summary (no checkpoints)
#   $OUT/gpu_train.log    this script's own log
set -u

OUT=${OUT:?set OUT to the output folder}
MINUTES=${GPU_TRAIN_MINUTES:-4.5}
STEPS=${GPU_TRAIN_STEPS:-1000000}
BATCH=${GPU_TRAIN_BATCH:-256}
LR=${GPU_TRAIN_LR:-4e-4}
SAMPLE_EVERY=${GPU_TRAIN_SAMPLE_EVERY:-2000}
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/weights"
WORK=$(mktemp -d)
LOG="$OUT/gpu_train.log"
log() { echo "[gpu_train $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

log "repo $REPO, out $OUT, work $WORK, minutes=$MINUTES steps=$STEPS batch=$BATCH lr=$LR"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader 2>&1 | tee -a "$LOG"
"$PY" -c "import torch, torchvision, safetensors, tqdm; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() \
else 'cpu')" 2>&1 | tee -a "$LOG"

# ---- data: unpack the MNIST tarball into torchvision's layout <root>/MNIST/raw/ -----------------
if [ -n "${MNIST_TARBALL:-}" ]; then
    . scripts/mnist_tarball.sh
    if ! unpack_mnist "$MNIST_TARBALL" "$WORK/data"; then
        log "FATAL: no MNIST"; exit 1
    fi
fi
log "MNIST from ${DIFFUSION_TUTORIAL_DATA:-the default data root (~/.cache/diffusion_tutorial)}"

# ---- train both models concurrently ----------------------------------------------------------
COMMON=(--dataset mnist --model mnist --steps "$STEPS" --batch-size "$BATCH" --lr "$LR"
    --warmup-steps 500 --ema-decay 0.999 --schedule linear --T 1000
    --sample-every "$SAMPLE_EVERY" --checkpoint-every 2000 --log-every 100
    --time-limit-min "$MINUTES" --seed 0 --no-progress)
train_one() {  # name, extra args...: runs in the background, writes <name>.rc when done
    local name=$1; shift
    "$PY" -m diffusion_tutorial.train "${COMMON[@]}" "$@" --out "$WORK/runs/$name" \
        --export "$OUT/weights/$name.safetensors" >"$WORK/$name.log" 2>&1
    echo $? >"$WORK/$name.rc"
}
mkdir -p "$WORK/runs"
T0=$(date +%s)
train_one mnist &
PID_U=$!
train_one mnist-cond --conditional --p-uncond 0.1 --guidance-scale 3.0 &
PID_C=$!
log "started mnist (pid $PID_U) and mnist-cond (pid $PID_C)"

while kill -0 "$PID_U" 2>/dev/null || kill -0 "$PID_C" 2>/dev/null; do
    sleep 20
    for name in mnist mnist-cond; do
        last=$(tail -n 1 "$WORK/runs/$name/loss.csv" 2>/dev/null || echo "starting")
        log "$name: step,loss,lr,wall = $last"
    done
done
wait
log "both runs ended after $(( $(date +%s) - T0 )) s"

STATUS=0
for name in mnist mnist-cond; do
    rc=$(cat "$WORK/$name.rc" 2>/dev/null || echo missing)
    log "$name exit code: $rc; last log lines:"
    tail -n 5 "$WORK/$name.log" | tee -a "$LOG"
    [ "$rc" = 0 ] || STATUS=1
    grid=$(ls "$WORK/runs/$name"/samples_*.png 2>/dev/null | tail -n 1)
    [ -n "$grid" ] && cp "$grid" "$OUT/${name}_samples.png"
done
ls -la "$OUT/weights" | tee -a "$LOG"
(cd "$OUT/weights" && sha256sum ./*.safetensors 2>/dev/null) | tee -a "$LOG"
OUT="$OUT" "$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import glob, json
from safetensors import safe_open
for path in sorted(glob.glob(__import__("os").environ["OUT"] + "/weights/*.safetensors")):
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    keep = ("steps", "batch_size", "hardware", "wall_time_s", "parameters", "final_loss")
    print(path.rsplit("/", 1)[-1], {k: json.loads(meta[k]) for k in keep if k in meta})
EOF

# ---- quality bench (bench/quality.py) on the freshly exported weights ------------------------
# 2,000 samples per sampler; rows are logged as they finish, so a time-out still leaves results.
QUALITY_SECONDS=${GPU_QUALITY_SECONDS:-220}
log "quality bench (at most ${QUALITY_SECONDS} s)"
timeout "$QUALITY_SECONDS" "$PY" bench/quality.py --n "${GPU_QUALITY_N:-2000}" --device "${GPU_QUALITY_DEVICE:-cuda}" ${GPU_QUALITY_SAMPLERS:+--samplers "$GPU_QUALITY_SAMPLERS"} \
    --batch "${GPU_QUALITY_N:-2000}" --weights-dir "$OUT/weights" --guidance 3 \
    --extra-guidance 0,1 --extra-samplers dpm:20 --out "$OUT/quality.md" \
    >"$OUT/quality.log" 2>&1 || log "quality bench ended with status $? (see quality.log)"

# ---- pack logs, loss curves and sample grids (no checkpoints: they are large) ----------------
mkdir -p "$WORK/results"
for name in mnist mnist-cond; do
    mkdir -p "$WORK/results/$name"
    cp "$WORK/$name.log" "$WORK/runs/$name"/loss.csv "$WORK/runs/$name"/*.png \
        "$WORK/results/$name/" 2>/dev/null
done
cp "$LOG" "$WORK/results/"
tar -czf "$OUT/results.tar.gz" -C "$WORK/results" . && log "wrote $OUT/results.tar.gz"
log "done (status $STATUS)"
exit $STATUS

#!/usr/bin/env bash
# Fine-tune the shipped `mnist` weights on ONE GPU with a cosine learning-rate decay, two learning
# rates side by side, then score each candidate and the shipped file with DDPM 1000 and
# SDE-DPM-Solver++(2) at 20 NFE (bench/quality.py, 2,000 samples, on the GPU).
# It trained stage 3 of the shipped `mnist`; stage 4 ran its train command once more, with
# --init <stage 3's file> --seed 1 (book/model_cards.md gives both commands and the results).
#
# Usage (from the repository root, on a machine with a CUDA GPU; outputs go under $OUT):
#   OUT=/some/dir bash scripts/gpu_finetune.sh
# Environment overrides (a CPU smoke test: FT_STEPS=4 FT_BATCH=8 FT_N=16 FT_DEVICE=cpu):
#   FT_STEPS (3000)  FT_BATCH (512)  FT_LRS ("2e-4 4e-4")  FT_MINUTES (5, a safety cap per run)
#   FT_N (2000 samples per quality row)  FT_DEVICE (cuda)  FT_QUALITY_SECONDS (160 per model)
#   MNIST_TARBALL (MNIST raw files as .tar.gz; without it, the package's data root is used)
# What comes back: $OUT/lr<LR>.safetensors per candidate, $OUT/results.tar.gz (training logs,
# loss.csv, quality tables), $OUT/run.log.
set -u
OUT=${OUT:?set OUT to the output folder}
STEPS=${FT_STEPS:-3000}
BATCH=${FT_BATCH:-512}
LRS=${FT_LRS:-"2e-4 4e-4"}
MINUTES=${FT_MINUTES:-5}
N=${FT_N:-2000}
DEV=${FT_DEVICE:-cuda}
QSEC=${FT_QUALITY_SECONDS:-160}
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
WORK=$(mktemp -d)
LOG="$OUT/run.log"
mkdir -p "$OUT" "$WORK/res"
log() { echo "[gpu_finetune $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
log "steps=$STEPS batch=$BATCH lrs=$LRS n=$N device=$DEV"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$LOG"

if [ -n "${MNIST_TARBALL:-}" ]; then
    . scripts/mnist_tarball.sh
    unpack_mnist "$MNIST_TARBALL" "$WORK/data" || { log "FATAL: no MNIST"; exit 1; }
fi

quality() {  # name, weights dir: DDPM 1000 and SDE-DPM-Solver++(2) 20 on the leading grid
    timeout "$QSEC" "$PY" bench/quality.py --n "$N" --batch "$N" --device "$DEV" --models mnist \
        --weights-dir "$2" --samplers ddpm,sde:20:leading --out "$WORK/res/quality_$1.md" \
        >"$WORK/res/quality_$1.log" 2>&1
    log "quality $1 ended ($?): $(grep -h '^| mnist' "$WORK/res/quality_$1.md" 2>/dev/null | tr '\n' ' ')"
}

# the shipped weights, scored on this GPU while the candidates train (the control)
mkdir -p "$WORK/shipped" && cp diffusion_tutorial/weights/mnist.safetensors "$WORK/shipped/"
quality shipped "$WORK/shipped" &
pids=()
for lr in $LRS; do
    mkdir -p "$WORK/lr$lr"
    "$PY" -m diffusion_tutorial.train --dataset mnist --model mnist --init mnist --steps "$STEPS" \
        --batch-size "$BATCH" --lr "$lr" --lr-decay cosine --warmup-steps 200 --ema-decay 0.999 \
        --schedule linear --T 1000 --precision bf16 --device "$DEV" --sample-every 0 \
        --checkpoint-every 1000 --log-every 100 --time-limit-min "$MINUTES" --seed 0 \
        --no-progress --out "$WORK/run_lr$lr" --export "$WORK/lr$lr/mnist.safetensors" \
        >"$WORK/res/train_lr$lr.log" 2>&1 &
    pids+=($!)
done
while true; do
    sleep 20; alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    for lr in $LRS; do log "lr $lr: $(tail -n 1 "$WORK/run_lr$lr/loss.csv" 2>/dev/null)"; done
    [ $alive = 1 ] || break
done
for lr in $LRS; do
    cp "$WORK/lr$lr/mnist.safetensors" "$OUT/lr$lr.safetensors" 2>/dev/null
    cp "$WORK/run_lr$lr/loss.csv" "$WORK/res/loss_lr$lr.csv" 2>/dev/null
    (cd "$WORK/lr$lr" && sha256sum mnist.safetensors | tee -a "$LOG")
    tail -n 3 "$WORK/res/train_lr$lr.log" | tee -a "$LOG"
    quality "lr$lr" "$WORK/lr$lr" &
done
wait
cp "$LOG" "$WORK/res/"
tar -czf "$OUT/results.tar.gz" -C "$WORK/res" . && log "wrote results.tar.gz"

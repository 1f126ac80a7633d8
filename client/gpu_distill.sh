#!/usr/bin/env bash
# Distil the shipped trained demo model into its 4-step, guidance-free student on a GPU machine without network
# (the workplace's device tool), in one call:
#   bash client/gpu_distill.sh WHEEL_DIR
# WHEEL_DIR holds the wheels the machine lacks (diffusers, av), as for client/gpu_train.sh. The shipped model
# (t2vserve/data/trained/unet3d/) is copied to /tmp and distilled there (python -m t2vserve.train distill), then
# teacher and student are compared in-process on the quality set. Extra distillation arguments go in DISTILL_ARGS
# (default "--max-seconds 300": 20 -> 4 steps, up to 3,000 updates of 64 pairs), evaluation ones in EVAL_ARGS
# (default: the quality set's 6 seeds; it is stopped when BUDGET_S, default 560 s from the script's start, runs out,
# the student's tar being written before it: "--eval-seeds 7 2024 31337" halves it). DEVICE (default cuda; cpu tries the script
# anywhere) and PYTHON (python3).
# Results in ${OUT:-outputs}/distill/: unet_distilled.tar (the student's component directory: untar it into
# t2vserve/data/trained/unet3d/ to ship it), distill.log, distill-report.json (adherence, seconds per clip, UNet
# samples per clip, PSNR/SSIM to the 20-step teacher, the distillation's rounds and times).
set -euo pipefail
shopt -s nullglob
start=$(date +%s)
wheels=$1
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
out=${OUT:-outputs}/distill
work=/tmp/t2v-distill
mkdir -p "$out"
rm -rf "$work"
for w in "$wheels"/*.whl; do
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$w"
done
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
if [ "$device" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
log() { grep --line-buffered -v "Writing model shards\|Loading weights" | tee -a "$out/distill.log"; }
: > "$out/distill.log"
# shellcheck disable=SC2086  # DISTILL_ARGS / EVAL_ARGS are word lists
"$python" -m t2vserve.train distill --out "$work/unet3d" --device "$device" ${DISTILL_ARGS:---max-seconds 300} 2>&1 | log
tar -C "$work/unet3d" -cf "$out/unet_distilled.tar" unet_distilled   # the student is safe before the evaluation starts
left=$(( ${BUDGET_S:-560} - ($(date +%s) - start) ))
echo "distilled and saved $(( $(date +%s) - start )) s after the start; evaluating (at most ${left} s)" | log
if [ "$left" -ge 30 ]; then
  # shellcheck disable=SC2086
  timeout "$left" "$python" -m t2vserve.train distill --out "$work/unet3d" --device "$device" --evaluate-only \
    --report "$out/distill-report.json" ${EVAL_ARGS:-} 2>&1 | log || echo "evaluation stopped (status $?): time budget" | log
fi
echo "total $(( $(date +%s) - start )) s" | log
ls -la "$out"

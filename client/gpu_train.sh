#!/usr/bin/env bash
# Train the tiny demo model(s) on a GPU machine without network (the workplace's device tool), in one call:
#   bash client/gpu_train.sh WHEEL_DIR [FAMILY ...]        (default family: unet3d)
# WHEEL_DIR holds the wheels the machine lacks (diffusers, av). Extra arguments for
# ``python -m t2vserve.train`` go in TRAIN_ARGS (default "--max-seconds 540": the run fits one 10-minute call; wan22, whose recipe
# fills its budget: TRAIN_ARGS="--max-seconds 470 --eval-guidance 3 7": the H100 call took 8:00 with its evaluation). Per family, results go
# to ${OUT:-outputs}/train-<family>/: model.tar (the diffusers directory, in 15-MiB parts where larger, to commit under
# t2vserve/data/trained/<family>/), samples.tar (MP4 per quality prompt), adherence-<family>.json, train.log.
set -euo pipefail
wheels=$1; shift
families=("${@:-unet3d}")
out=${OUT:-outputs}
for w in "$wheels"/*.whl; do
  [ -e "$w" ] || continue  # an empty WHEEL_DIR: the wheels are installed already (client/gpu_bench.sh install)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$w"
done
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
timer=(); [ -x /usr/bin/time ] && timer=(/usr/bin/time -v)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for family in "${families[@]}"; do
  dir=$out/train-$family; mkdir -p "$dir"; work=/tmp/t2v-train
  rm -rf "$work/$family" "$work/samples-$family"
  "${timer[@]}" python3 -m t2vserve.train --family "$family" --device cuda --out "$work/$family" --evaluate ${TRAIN_ARGS:---max-seconds 540} \
    2> >(grep -v "Writing model shards\|Loading weights" | tee "$dir/train.err" >&2) | tee "$dir/train.log"
  tar -C "$work" -cf "$dir/model.tar" "$family"
  # files come back from the device machine at most 16 MiB each: larger tars return in parts (cat model.tar.part-* | tar -x)
  if [ "$(stat -c %s "$dir/model.tar")" -gt 15728640 ]; then split -b 15M "$dir/model.tar" "$dir/model.tar.part-" && rm "$dir/model.tar"; fi
  tar -C "$work" -cf "$dir/samples.tar" "samples-$family"
  cp "$work/adherence-$family.json" "$dir/"
  ls -la "$dir"
done

#!/usr/bin/env bash
# Full-size ONNX export on the GPU machine (device tool), one graph at a time:
#   bash client/gpu_bench.sh install .gpu1; bash client/gpu_bench.sh install .gpu2   # wheels, as for the bench
#   bash client/gpu_export_check.sh transformer          # builds the TI2V-5B-size model once (random weights)
#   bash client/gpu_export_check.sh text_encoder,kv_projector
#   bash client/gpu_export_check.sh vae_decoder
# Each graph is exported from the full-size weights (fp32, external data) and checked against torch
# under ONNX Runtime on a small shape: the shapes of the wan22-tiny preset (64x64, up to 17 frames, the
# VAE unrolled to 5 latent frames). The previous graph is deleted first: the machine's 64 GB disk holds
# the model (22 GB bf16) and one fp32 graph (the 5B transformer is 20 GB, UMT5-XXL 23 GB), not all.
set -euo pipefail
slots=$1; out=${OUT:-outputs}; mkdir -p "$out"
work=/tmp/t2v-export; model=$work/wan22-ti2v-5b; repo=$work/model_repository
export PYTHONUNBUFFERED=1
if [ ! -f "$model/model_index.json" ]; then
  start=$(date +%s)
  python3 -c "import sys, torch; from pathlib import Path; from t2vserve.families import get_family; get_family('wan22').build_full_size_model(Path(sys.argv[1]), 'wan22-480p', torch.bfloat16, 'cuda')" "$model" 2>&1 | grep -v Warning || true
  echo "built $model in $(( $(date +%s) - start )) s: $(du -sh "$model" | cut -f1)" | tee -a "$out/export-check.log"
fi
rm -f "$repo"/*/1/model.onnx "$repo"/*/1/model.onnx.data
timer=(); [ -x /usr/bin/time ] && timer=(/usr/bin/time -v)   # peak memory where GNU time exists
"${timer[@]}" python3 export/export_onnx.py --weights "$model" --preset wan22-tiny --repository "$repo" --slots "$slots" 2>&1 \
  | grep --line-buffered -E "t2vserve|Maximum resident|Elapsed|Error|error" | tee -a "$out/export-check.log"
du -b "$repo"/*/1/model.onnx* 2>/dev/null | tee -a "$out/export-check.log"

#!/usr/bin/env bash
# Full-size INT8 and FP8 Q/DQ ONNX of the ModelScope-size UNet3D and of the Wan2.2-TI2V-5B transformer
# (random weights), one device call (t2vserve/quantize/full_size.py):
#   bash client/gpu_qdq_export.sh WHEEL_DIR...     # e.g. .gpu1 .whl/qdq: the wheels the machine lacks
#   TINY=1 bash client/gpu_qdq_export.sh           # dry run on the tiny models, on the CPU (any machine)
# Wheels: diffusers (as for client/gpu_bench.sh) and what ModelOpt and graphsurgeon need that the
# machine lacks (.whl/qdq, fetched as client/qdq_wheels.txt says: nvidia-modelopt 0.47.0,
# onnx-graphsurgeon, pulp, omegaconf, pydantic(-core), rich, ...); they go to /tmp/site like gpu_bench.sh's. JOBS (default every family x int8,fp8, e.g.
# JOBS=wan22:fp8) picks jobs. Results in ${OUT:-outputs}: qdq-export.json, qdq-export.md (sizes,
# times, check, peak RSS / GPU memory) and qdq-export.log; rewritten after every job.
set -euo pipefail
out=${OUT:-outputs}; mkdir -p "$out"
for wheels in "$@"; do bash client/gpu_bench.sh install "$wheels" > /dev/null; done
[ $# -gt 0 ] || [ -n "${TINY:-}" ] || bash client/gpu_bench.sh install "" > /dev/null   # the .pth that puts this checkout on the path
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 PYTHONFAULTHANDLER=1  # a crashing job's Python stack lands in the log
python3 - <<'EOF'   # fail in seconds, not after a model build, when a wheel is missing
import importlib.util, sys
missing = [m for m in ("diffusers", "transformers", "modelopt.torch.quantization", "onnx", "onnx_graphsurgeon", "onnxruntime", "t2vserve")
           if importlib.util.find_spec(m.split(".")[0]) is None]
try:
    import modelopt.torch.quantization  # noqa: F401  (its own imports: pydantic, rich, pulp, omegaconf, scipy, ...)
except Exception as exc:
    missing.append(f"modelopt import: {exc}")
sys.exit(f"missing: {missing}") if missing else print("imports ok")
EOF
if [ -n "${TINY:-}" ]; then args=(--tiny --device cpu --work /tmp/t2v-qdq-tiny); else args=(--device cuda --work /tmp/t2v-qdq)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"; fi
python3 -m t2vserve.quantize.full_size --out "$out" "${args[@]}" ${JOBS:+--jobs "$JOBS"}

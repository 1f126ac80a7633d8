#!/usr/bin/env bash
# The GPU benchmark as run on a GPU machine without network (the workplace's device tool):
#   bash client/gpu_bench.sh install   WHEEL_DIR   # (as often as needed) add wheels the machine lacks
#   bash client/gpu_bench.sh inprocess [WHEEL_DIR] # diffusers eager vs runner modules, denoiser steps, VAE
#   bash client/gpu_bench.sh served    [WHEEL_DIR] # tritonserver + torch runner: latency, overhead, load, perf_analyzer
#   bash client/gpu_bench.sh variants  [WHEEL_DIR] # make quality's tracks at full size, in-process (QUALITY=docs/quality.json
#                                                  # joins the CPU report's fidelity columns): one table per family
#   bash client/gpu_bench.sh probe     [WHEEL_DIR] # one denoiser step alone / while nvidia-smi polls / beside idle CUDA
#                                                  # contexts / in a new process with the server's environment
#   bash client/gpu_bench.sh prefill   [WHEEL_DIR] # torch.compile caches of the denoiser entries, all at once (SIZES=2: the
#                                                  # CFG pair only), for a later part with the same T2V_COMPILE_CACHE_DIR
#   bash client/gpu_bench.sh ramp      [WHEEL_DIR] # the runner's denoiser call lone and synchronised (a served step) vs back
#                                                  # to back (the in-process loop), by compiled sizes (SIZES, default 2,4);
#                                                  # ALSO_GUARDS=inputs: once more compiled with T2V_COMPILE_GUARDS=inputs
# SERVE_TRACKS (e.g. fp16) exports only those tracks' denoiser entries: the others load and compile nothing.
# PRESET (default modelscope; wan22-480p, wan22-720p), STEPS, FRAMES, HEIGHT and WIDTH, CONCURRENCY (default 1,2,4),
# STEP_CACHE (inprocess: also time the clip with the step cache at these thresholds, e.g. 0.1,0.2; default none),
# EXPERTS (wan22: 2 = the A14B layout) and REPEATS choose the workload; PRECISION (e.g. fp16,fp8 for
# modelscope, bf16,fp8 for wan22) times those tracks side by side, served and in-process, with the
# kernels each ran (the first track is also the one of the other measurements); the model and repository are
# kept in /tmp/t2v-bench-$PRESET (WORK overrides it) so a second part on the same (warm) machine reuses them. TAG names the
# results (bench-$PRESET-$TAG-$part.json) so runs of one preset at other sizes or repeats keep their own.
# PER_CLIENT: requests per client in the concurrency runs (default 2); QUEUE_DELAY_US: the denoisers' batcher delay
# for this run (default: the generated config's); ALSO_SERVED (e.g. delay=0,poll=0+gpumetrics=0): serve again with these
# settings after the served part (latency only, same runners); GPU_POLL_S: nvidia-smi's memory polling interval (0: off);
# T2V_COMPILED_BATCH_SIZES=2: compile one request's size only.
# T2V_TORCH_COMPILE=none serves the torch runner eagerly (t2vserve/settings.py; no compile at start);
# T2V_COMPILE_GUARDS=inputs skips dynamo's per-call guards on the modules' own state (the ramp part measures it).
# Wheels the machine lacks (nvidia-pytriton, perf-analyzer, diffusers, av, tritonclient, ...) are
# installed from WHEEL_DIR into /tmp/site, which a .pth file puts first on the interpreter's path (the
# Triton Python stub ignores PYTHONPATH; numpy 1.26 there because the Python backend of Triton 2.51
# misreads BYTES tensors under numpy 2). Results go to ${OUT:-outputs}.
set -euo pipefail
part=$1; wheels=${2:-}
out=${OUT:-outputs}; mkdir -p "$out"
rm -rf /tmp/site/numpy /tmp/site/numpy-*  # numpy belongs in /tmp/np1 only
if [ -n "$wheels" ]; then
  for w in "$wheels"/*.whl; do
    case $(basename "$w") in
      numpy-*) target=/tmp/np1 ;;   # only for Triton's Python stubs (see below)
      *) target=/tmp/site ;;
    esac
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $target "$w"
  done
fi
# Triton 2.51's Python stub builds BYTES inputs with pybind11 arrays that numpy 2 misreads (a tensor
# of the first byte repeated), so the stubs get numpy 1.26 (T2V_STUB_NUMPY1, set by the bench for
# tritonserver only). This machine's peft/scikit-learn/scipy need numpy 2 and are optional for
# diffusers and transformers: the stubs see them as absent.
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
{
  echo 'import sys; sys.path.insert(0, "/tmp/site")'
  echo 'import os, sys; os.environ.get("T2V_STUB_NUMPY1") and (sys.path.insert(0, "/tmp/np1"), sys.modules.update(dict.fromkeys(("peft", "sklearn", "scipy"))))'
  echo "$PWD"
} > "$site/t2vserve-extra.pth"
[ "$part" = install ] && { python3 -c 'import numpy, sys; print("numpy", numpy.__version__); import grpc' || true; exit 0; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
# an earlier run's tritonserver may still be shutting down (its stubs hold GPU memory): wait up to 2 minutes
[ "$part" = served ] && for _ in $(seq 60); do [ -z "$(nvidia-smi --query-compute-apps=pid --format=csv,noheader)" ] && break; sleep 2; done
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
# probe (needs only .whl5's diffusers and nvidia-pytriton): the stock denoiser's step under the conditions that differ
# between the bench process and a server's stubs (t2vserve/bench/probe.py)
[ "$part" = probe ] && { python3 -m t2vserve.bench.probe --preset "${PRESET:-modelscope}" --out "$out/probe-${PRESET:-modelscope}.json"; exit; }
python3 -c 'import numpy; print("bench numpy", numpy.__version__)'
T2V_STUB_NUMPY1=1 python3 -c 'import numpy; print("stub numpy", numpy.__version__); import diffusers, transformers, av, t2vserve.families'

if [ "$part" = ramp ]; then
  python3 -m t2vserve.bench.step_ramp --preset "${PRESET:-modelscope}" --work "${WORK:-/tmp/t2v-bench-${PRESET:-modelscope}}" ${SIZES:+--sizes "$SIZES"} \
    ${PRECISION:+--precision "${PRECISION%%,*}"} ${ALSO_GUARDS:+--also-guards "$ALSO_GUARDS"} --out "$out/ramp-${PRESET:-modelscope}${TAG:+-$TAG}.json" 2>&1 | grep --line-buffered -v "Warning\|warn_once\|This call originates\|upsampling.py\|is_torch_version\|^$" | tee "$out/ramp-${PRESET:-modelscope}${TAG:+-$TAG}.log"
  exit
fi
pa=/tmp/site/perf_analyzer/bin/perf_analyzer
extra=()
if [ "$part" = served ] && [ -x "$pa" ] && [ "${PERF:-1}" = 1 ]; then extra=(--perf-analyzer "$pa"); fi  # PERF=0: skip it
preset=${PRESET:-modelscope}
python3 client/bench.py "$part" --device cuda --preset "$preset" --experts "${EXPERTS:-1}" --steps "${STEPS:-20}" \
  ${FRAMES:+--frames "$FRAMES"} ${HEIGHT:+--height "$HEIGHT"} ${WIDTH:+--width "$WIDTH"} ${STEP_CACHE:+--step-cache "$STEP_CACHE"} --concurrency "${CONCURRENCY-1,2,4}" --work "${WORK:-/tmp/t2v-bench-$preset}" ${SIZES:+--sizes "$SIZES"} ${SERVE_TRACKS:+--serve-tracks "$SERVE_TRACKS"} ${QUALITY:+--quality "$QUALITY"} \
  ${QUEUE_DELAY_US:+--queue-delay-us "$QUEUE_DELAY_US"} ${ALSO_SERVED:+--also-served "$ALSO_SERVED"} ${GPU_POLL_S:+--gpu-poll-s "$GPU_POLL_S"} --repeats "${REPEATS:-2}" --per-client "${PER_CLIENT:-2}" ${PRECISION:+--precisions "$PRECISION"} --out "$out/bench-$preset${TAG:+-$TAG}-$part.json" "${extra[@]}" 2>&1 | grep --line-buffered -v "Collecting tensor\|histogram\|Dynamo detected\|warn_once\|This call originates\|upsampling.py\|is_torch_version\|^$" | tee "$out/bench-$preset${TAG:+-$TAG}-$part.log"

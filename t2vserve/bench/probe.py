"""Probe: is a denoiser step slower outside the bench process for reasons that are not Triton's?

Served, the UNet's call takes 151.7 ms in its stub against 143.5-144.6 ms for the same runner in the bench
process (GPU round 6). This times one module, the family's stock denoiser at full size (random weights, eager),
one CFG pair at the preset's size, under the conditions that differ between the two:

* ``alone``: this process, nothing else on the GPU (twice: first and last, for the GPU's drift);
* ``nvidia-smi``: while ``nvidia-smi`` polls GPU memory every 0.5 s, as the served bench's ``GpuMemoryPoller`` does;
* ``idle contexts``: while 8 other processes hold idle CUDA contexts, as a server's Python stubs do;
* ``new process`` / ``server environment``: a new Python process with this environment, and with the one
  ``EmbeddedTritonServer`` gives tritonserver and so its stubs (library path, thread counts, the stubs' numpy).

    python -m t2vserve.bench.probe --preset modelscope --out outputs/probe.json     # gpu_bench.sh probe
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ..families import family_of
from .common import child_json, environment, stub_environment, timed

#: Processes holding an idle CUDA context in the ``idle contexts`` condition (a server's Python stubs: 9 here).
IDLE_CONTEXTS = 8
IDLE = "import time, torch; torch.zeros(1, device='cuda'); print('ready', flush=True); time.sleep(3600)"


def step_seconds(preset: str, repeats: int, device: str = "cuda") -> float:
    """Median seconds of one eager stock-denoiser call (one CFG pair) at ``preset``'s size, built in this process."""
    dtype = family_of(preset).reference_dtype if device == "cuda" else torch.float32
    call, sample_shape, text_shape = family_of(preset).full_size_denoiser(preset, dtype, device)
    sample = torch.randn(2, *sample_shape, device=device, dtype=dtype)
    timestep = torch.full((2,), 981.0, device=device)
    text = torch.randn(2, *text_shape, device=device, dtype=dtype)
    with torch.inference_mode():
        return timed(lambda: call(sample, timestep, text), repeats, 3, cuda=device == "cuda")


def loaded_cudnn() -> str:
    """The cuDNN library this process loaded (its path), or "none"."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "libcudnn.so" in line and "/" in line}
    return ", ".join(sorted(paths)) or "none"


def in_new_process(preset: str, repeats: int, device: str, env: dict[str, str]) -> float:
    command = [sys.executable, "-m", "t2vserve.bench.probe", "--child", "--preset", preset, "--repeats", str(repeats), "--device", device]
    child = child_json(command, env)
    if child is None:
        return float("nan")
    print(f"  its cuDNN: {child['cudnn']}", flush=True)
    return float(child["seconds"])


def run_probe(preset: str, repeats: int, device: str) -> dict[str, Any]:
    from .served import GpuMemoryPoller

    results: dict[str, Any] = {"preset": preset, "environment": environment(), "step_ms": {}}
    ms = results["step_ms"]

    def record(condition: str, seconds: float) -> None:
        ms[condition] = seconds * 1e3
        print(f"{condition}: {seconds * 1e3:.1f} ms", flush=True)

    record("alone", step_seconds(preset, repeats, device))
    with GpuMemoryPoller(0.5):
        record("nvidia-smi polling every 0.5 s", step_seconds(preset, repeats, device))
    idle = [subprocess.Popen([sys.executable, "-c", IDLE], stdout=subprocess.PIPE, text=True) for _ in range(IDLE_CONTEXTS if device == "cuda" else 0)]
    try:
        for process in idle:
            process.stdout.readline()  # "ready": its context exists
        record(f"{len(idle)} idle CUDA contexts in other processes", step_seconds(preset, repeats, device))
    finally:
        for process in idle:
            process.kill()
    record("new process, this environment", in_new_process(preset, repeats, device, dict(os.environ)))
    server_env = stub_environment()
    record("new process, the server's (stubs') environment", in_new_process(preset, repeats, device, server_env))
    # round 6 found the cause here: the stubs' LD_LIBRARY_PATH put the system's cuDNN before the one torch ships
    same_libraries = {**server_env, "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", "")}
    record("new process, the server's environment with this LD_LIBRARY_PATH", in_new_process(preset, repeats, device, same_libraries))
    record("alone, again", step_seconds(preset, repeats, device))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="modelscope")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--child", action="store_true", help="time the step once and print it as JSON (the new-process conditions)")
    parser.add_argument("--out", type=Path, default=Path("outputs/probe.json"))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps({"seconds": step_seconds(args.preset, args.repeats, args.device), "cudnn": loaded_cudnn()}), flush=True)
        return 0
    results = run_probe(args.preset, args.repeats, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| condition | denoiser step (eager, one CFG pair) |\n|---|---|")
    for condition, value in results["step_ms"].items():
        print(f"| {condition} | {value:.1f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

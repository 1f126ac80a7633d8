"""In-process GPU/CPU measurements: diffusers eager end to end, denoiser steps (stock, cached K/V, as the
runner runs it), FLOPs and share of the measured bf16 peak, VAE decode, peak memory, and the t2vserve
loop in-process with the repository's runners (what the served path runs, minus Triton), and that clip
with the step cache at each ``--step-cache`` threshold (seconds, steps skipped)."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..families import get_family
from ..spec import DENOISER, KV_PROJECTOR, VAE_DECODER
from ..step_cache import StepCache
from .common import RunnerPipeline, bench_request, bf16_matmul_peak, child_json, environment, load_geometry, stub_environment, timed
from .tracks import inprocess_tracks


def run_inprocess(args: argparse.Namespace, model_dir: Path, repository: Path) -> dict[str, Any]:
    from diffusers import DiffusionPipeline
    from torch.utils.flop_counter import FlopCounterMode

    cuda = args.device == "cuda"
    geometry = load_geometry(repository)
    family = get_family(geometry.family)
    request = bench_request(geometry, args.steps, args.frames, (args.precisions or [None])[0], height=args.height, width=args.width)
    results: dict[str, Any] = {"request": request.__dict__, "environment": environment(), "family": family.name}
    dtype = family.reference_dtype if cuda else torch.float32
    if args.tracks_only:  # only the precision tracks' denoiser steps (no diffusers reference, no clip)
        results["tracks"] = inprocess_tracks(repository, geometry, args, lambda: denoiser_feeds(geometry, request, args.device))
        return results

    pipe = DiffusionPipeline.from_pretrained(str(model_dir), torch_dtype=dtype).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    results["reference_pipeline"] = type(pipe).__name__

    def diffusers_clip(steps: int) -> Any:
        return pipe(request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=steps,
                    guidance_scale=request.guidance_scale, height=request.height, width=request.width,
                    num_frames=request.num_frames, generator=torch.Generator("cpu").manual_seed(42), output_type="np")

    diffusers_clip(2)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    results["diffusers_clip_s"] = timed(lambda: diffusers_clip(request.steps), repeats=args.repeats, warmup=0, cuda=cuda)
    if cuda:
        results["diffusers_peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(f"diffusers eager clip ({results['reference_pipeline']}): {results['diffusers_clip_s']:.3f} s", flush=True)

    # one denoiser step, CFG as one batch-2 call, at the request's size
    slots = {slot.role: slot for slot in family.slots_of(geometry) if slot.quantized_from is None and slot.component is None}
    shape = geometry.latent_shape(request.height, request.width, request.num_frames, batch=2)
    sample = torch.randn(shape, device=args.device, dtype=dtype)
    timestep = torch.full((2,), 981.0, device=args.device)
    text = torch.randn(2, geometry.text_max_length, geometry.text_hidden_size, device=args.device, dtype=dtype)
    stock = family.stock_denoiser(pipe)
    cached, vae, projector = (slots[role].module(pipe).to(args.device) for role in (DENOISER, VAE_DECODER, KV_PROJECTOR))
    with torch.inference_mode():
        kv = projector(text)
        results["kv_bytes_per_request_fp32"] = kv.numel() * 4
        results["kv_projection_s"] = timed(lambda: projector(text), 3, 1, cuda)
        results["denoiser_step_stock_eager_s"] = timed(lambda: stock(sample, timestep, text), args.step_repeats, 3, cuda)
        results["denoiser_step_cached_kv_eager_s"] = timed(lambda: cached(sample, timestep, kv), args.step_repeats, 3, cuda)
        counter = FlopCounterMode(display=False)
        with counter:
            stock(sample, timestep, text)
        results["denoiser_step_flop"] = int(counter.get_total_flops())
        latents = torch.randn(1, *shape[1:], device=args.device, dtype=dtype)
        results["vae_decode_eager_s"] = timed(lambda: vae(latents), 3, 1, cuda)
    print(f"denoiser step eager: stock {results['denoiser_step_stock_eager_s'] * 1e3:.1f} ms, "
          f"cached K/V {results['denoiser_step_cached_kv_eager_s'] * 1e3:.1f} ms", flush=True)
    del pipe, cached, stock, vae, projector
    if cuda:
        torch.cuda.empty_cache()
        results["bf16_matmul_peak_flops"] = bf16_matmul_peak()

    # the runner's modules, exactly as the served engine slots run them
    runners = RunnerPipeline(repository, args.runner, args.device, request.precision)
    denoiser = runners.runners[geometry.tracks[request.precision][0]]
    kv_runner = runners.runners[slots[KV_PROJECTOR].name].run({slots[KV_PROJECTOR].input_names[0]: text.float()})
    feeds = dict(zip(slots[DENOISER].input_names, (sample.float(), timestep, next(iter(kv_runner.values())))))
    start = time.perf_counter()
    denoiser.run(feeds)
    results["runner_denoiser_first_call_s"] = time.perf_counter() - start  # includes torch.compile
    results["denoiser_step_runner_s"] = timed(lambda: denoiser.run(feeds), args.step_repeats, 3, cuda)
    vae_runner = runners.runners[slots[VAE_DECODER].name]
    results["vae_decode_runner_s"] = timed(lambda: vae_runner.run({slots[VAE_DECODER].input_names[0]: latents.float()}), 3, 1, cuda)
    runners.clip(request)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    results["inprocess_clip_s"] = timed(lambda: runners.clip(request), repeats=args.repeats, warmup=0, cuda=cuda)
    if cuda:
        results["inprocess_peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(f"runner denoiser step {results['denoiser_step_runner_s'] * 1e3:.1f} ms; in-process clip {results['inprocess_clip_s']:.3f} s", flush=True)
    results["inprocess_clip_step_cache"] = step_cache_clips(runners, request, args.step_cache, args.repeats, cuda)
    if args.precisions:
        del runners, denoiser
        results["tracks"] = inprocess_tracks(repository, geometry, args, lambda: feeds)
    return results


def denoiser_feeds(geometry: Any, request: Any, device: str) -> dict[str, torch.Tensor]:
    """Random denoiser inputs of one CFG pair at the request's size (what a step's call carries), fp32."""
    from ..spec import KV, SAMPLE, TIMESTEP

    shape = geometry.latent_shape(request.height, request.width, request.num_frames, batch=2)
    return {SAMPLE: torch.randn(shape, device=device), TIMESTEP: torch.full((2,), 981.0, device=device),
            KV: torch.randn(2, geometry.text_max_length, geometry.kv_layout.width, device=device)}


def step_cache_clips(runners: RunnerPipeline, request: Any, thresholds: list[float], repeats: int, cuda: bool) -> dict[str, dict[str, Any]]:
    """Per threshold: the in-process clip's median seconds with the step cache, and the steps it skipped."""
    out = {}
    for threshold in thresholds:
        caches: list[StepCache] = []

        def clip(threshold: float = threshold) -> None:
            caches.append(StepCache(threshold))
            runners.clip(replace(request, step_cache=threshold), step_cache=caches[-1])

        seconds = timed(clip, repeats=repeats, warmup=0, cuda=cuda)
        stats = caches[-1].stats
        out[f"{threshold:g}"] = {"seconds": seconds, "steps": stats.steps, "skipped": stats.skipped, "skipped_steps": stats.skipped_steps}
        print(f"in-process clip with STEP_CACHE={threshold:g}: {seconds:.3f} s, {stats.skipped} of {stats.steps} steps skipped", flush=True)
    return out


def run_inprocess_control(args: argparse.Namespace, repository: Path) -> dict[str, Any]:
    """The runner's denoiser step and the in-process clip again, after the served part (``all``): a control for the
    GPU's own drift (clocks, temperature) over the run, so served / in-process compares like with like."""
    geometry = load_geometry(repository)
    request = bench_request(geometry, args.steps, args.frames, (args.precisions or [None])[0], height=args.height, width=args.width)
    runners = RunnerPipeline(repository, args.runner, args.device, request.precision)
    denoiser = runners.runners[geometry.tracks[request.precision][0]]
    feeds = denoiser_feeds(geometry, request, args.device)
    cuda = args.device == "cuda"
    results = {"denoiser_step_runner_s": timed(lambda: denoiser.run(feeds), args.step_repeats, 3, cuda)}
    if cuda:  # the same steps while nvidia-smi polls as the served part's GpuMemoryPoller does: what the polling costs
        from .served import GpuMemoryPoller

        with GpuMemoryPoller(args.gpu_poll_s or 0.5):
            results["denoiser_step_runner_nvidia_smi_s"] = timed(lambda: denoiser.run(feeds), max(args.step_repeats, 30), 3, cuda)
    runners.clip(request)
    results["inprocess_clip_s"] = timed(lambda: runners.clip(request), repeats=args.repeats, warmup=0, cuda=cuda)
    if cuda:  # the step in a fresh process, with this process's environment and with the one the server gives its stubs
        del runners, denoiser
        torch.cuda.empty_cache()
        results["denoiser_step_subprocess_s"] = {env: step_in_subprocess(args, repository, request, env == "server") for env in ("bench", "server")}
    print(f"control after the served part: runner denoiser step {results['denoiser_step_runner_s'] * 1e3:.1f} ms "
          f"({results.get('denoiser_step_runner_nvidia_smi_s', float('nan')) * 1e3:.1f} ms while nvidia-smi polls); "
          f"in-process clip {results['inprocess_clip_s']:.3f} s", flush=True)
    return results


def step_in_subprocess(args: argparse.Namespace, repository: Path, request: Any, server_environment: bool) -> float:
    """The denoiser entry's runner step timed in a new Python process (``python -m t2vserve.bench.inprocess``), with
    this process's environment or with the one the server gives its stubs (library path, thread counts, the stubs'
    numpy): whether the stub's slower step comes with its process, not with Triton."""
    import sys

    command = [sys.executable, "-m", "t2vserve.bench.inprocess", str(repository), args.runner, args.device, str(request.precision),
               str(request.height), str(request.width), str(request.num_frames), str(request.steps), str(args.step_repeats)]
    child = child_json(command, stub_environment() if server_environment else dict(os.environ))
    return float(child["seconds"]) if child else float("nan")


def _step_main(argv: list[str]) -> None:
    """``python -m t2vserve.bench.inprocess REPOSITORY RUNNER DEVICE PRECISION HEIGHT WIDTH FRAMES STEPS REPEATS``: the
    denoiser entry's runner alone, one CFG pair at that size; prints {"seconds": median}."""
    import json

    from ..runners import make_runner
    from .common import runner_config

    repository, runner, device = Path(argv[0]), argv[1], argv[2]
    height, width, frames, steps, repeats = (int(v) for v in argv[4:9])
    geometry = load_geometry(repository)
    request = bench_request(geometry, steps, frames, argv[3], height=height, width=width)
    entry = geometry.tracks[request.precision][0]
    config = runner_config(repository, entry, runner)
    denoiser = make_runner(config["parameters"]["runner"]["string_value"], repository / entry / "1", config)
    feeds = denoiser_feeds(geometry, request, device)
    denoiser.run(feeds)  # compiles (the cache is warm after the served part)
    print(json.dumps({"seconds": timed(lambda: denoiser.run(feeds), repeats, 3, device == "cuda")}), flush=True)


if __name__ == "__main__":
    import sys

    _step_main(sys.argv[1:])


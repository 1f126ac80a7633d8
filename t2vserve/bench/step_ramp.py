"""Probe: the denoiser call as a served step makes it, against the in-process loop's calls.

A served step is one BLS request: the GPU is idle when the UNet stub's call starts, and the stub synchronises
before it answers. The in-process loop queues step n+1 while step n runs, so its calls never wait for the
CPU's share of a call. This times the runner's denoiser call (one CFG pair at the preset's size) three ways:

* ``launch``: the CPU's time until the call returns, the GPU idle before it (no synchronisation after);
* ``synchronised``: the same call until the GPU has finished it: a served step's call;
* ``pipelined``: ten calls back to back, then one synchronisation, per call: the in-process loop's.

``synchronised - pipelined`` is what each served step pays for starting on an idle GPU. Timed with one compiled
batch size (the in-process bench's), with more (the served warm-up's), and with dynamo's guard evaluation cut to
the guards that tell the compiled sizes apart (``skip_guard_eval_unsafe``: a measurement only, unsafe for a
server whose requests change shape); then a profile of five calls: where the launch's CPU time goes.

    python -m t2vserve.bench.step_ramp --preset modelscope --work /tmp/t2v-ramp --out outputs/ramp.json   # gpu_bench.sh ramp
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..runners import TorchRunner, compile_module
from ..settings import COMPILE_GUARDS
from .common import RunnerPipeline, bench_request, environment, load_geometry
from .inprocess import denoiser_feeds


def call_timings(call: Callable[[], object], sync: Callable[[], None], repeats: int = 10, warmup: int = 3) -> dict[str, float]:
    """Milliseconds of ``call``: median launch and synchronised times of ``repeats`` lone calls, and the mean per call
    of ``repeats`` calls back to back (``pipelined``)."""
    for _ in range(warmup):
        call()
    sync()
    launch, synchronised = [], []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        call()
        launch.append(time.perf_counter() - start)
        sync()
        synchronised.append(time.perf_counter() - start)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    sync()
    pipelined = (time.perf_counter() - start) / repeats
    return {"launch_ms": statistics.median(launch) * 1e3, "synchronised_ms": statistics.median(synchronised) * 1e3,
            "pipelined_ms": pipelined * 1e3}


def profile_rows(call: Callable[[], object], sync: Callable[[], None], calls: int = 5, rows: int = 12) -> list[dict[str, Any]]:
    """The functions with the most own CPU time over ``calls`` calls: (function, calls, own ms per call)."""
    profiler = cProfile.Profile()
    sync()
    profiler.enable()
    for _ in range(calls):
        call()
    profiler.disable()
    sync()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    entries = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:rows]  # type: ignore[attr-defined]
    return [{"function": f"{Path(file).name}:{line}({name})", "calls": int(numbers[1]), "own_ms_per_call": numbers[2] * 1e3 / calls}
            for (file, line, name), numbers in entries]


def measure(repository: Path, device: str, sizes: tuple[int, ...], precision: str | None = None,
            also_guards: str | None = None) -> dict[str, Any]:
    """The denoiser call's timings at the repository's preset size: one compiled size, then ``sizes``, then with guard
    evaluation cut; with ``also_guards``, once more compiled anew with those guards (``settings.compile_guards``);
    and the profile."""
    geometry = load_geometry(repository)
    request = bench_request(geometry, 20, None, precision)
    runners = RunnerPipeline(repository, "torch", device, request.precision)
    runner = runners.runners[geometry.tracks[request.precision][0]]
    if not isinstance(runner, TorchRunner):
        raise TypeError(f"the denoiser's torch runner expected, got {type(runner).__name__}")
    feeds = denoiser_feeds(geometry, request, device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def call() -> object:
        return runner.run(feeds)

    def first_call() -> float:  # the compile of one CFG pair's size, from the cache if filled
        start = time.perf_counter()
        call()
        sync()
        return time.perf_counter() - start

    timings: dict[str, dict[str, float]] = {}

    def timed(name: str) -> None:
        row = timings[name] = call_timings(call, sync)
        print(f"{name}: launch {row['launch_ms']:.2f} ms, synchronised {row['synchronised_ms']:.2f} ms, "
              f"pipelined {row['pipelined_ms']:.2f} ms", flush=True)

    results: dict[str, Any] = {"environment": environment(), "size": [request.height, request.width, request.num_frames],
                               "compile_guards": runner.guards, "timings": timings}  # T2V_COMPILE_GUARDS
    results["first_call_s"] = first_call()
    timed("one compiled size")
    runner.compiled_sizes = tuple(sorted(set(sizes) | {runner.request_batch}))
    results["warm_up_s"] = runner.warm_up()  # the other sizes, as the served entry compiles them before READY
    label = f"compiled sizes {','.join(map(str, runner.compiled_sizes))}"
    timed(label)
    with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
        timed(f"{label}, differentiating guards only")
    timed(f"{label}, again")
    if also_guards and also_guards != runner.guards:
        if runner.module is not None and runner.forward is not runner.module:  # compiled (eager on the CPU: no guards)
            torch._dynamo.reset()
            runner.forward = compile_module(runner.module, runner.compile_mode, also_guards)
        runner.guards = also_guards
        results["first_call_also_guards_s"] = first_call()
        timed(f"one compiled size, compile_guards {also_guards}")
    results["profile"] = profile_rows(call, sync)
    return results


def main(argv: list[str] | None = None) -> int:
    from . import prepare_repository

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="modelscope")
    parser.add_argument("--work", type=Path, required=True, help="where the full-size model and its repository are built (reused)")
    parser.add_argument("--sizes", default="2,4", help="the compiled batch sizes of the second timing (default 2,4)")
    parser.add_argument("--precision", default=None, help="the denoiser track (default the family's)")
    parser.add_argument("--also-guards", choices=COMPILE_GUARDS, default=None,
                        help="time the call once more, compiled anew with these guards (T2V_COMPILE_GUARDS)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",") if s)
    tracks = [args.precision] if args.precision else None
    _, repository = prepare_repository(args.preset, args.device, args.work, "torch", 1, None, tracks)
    if args.device == "cuda":
        torch.cuda.empty_cache()
    results = {"preset": args.preset, **measure(repository, args.device, sizes, args.precision, args.also_guards)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

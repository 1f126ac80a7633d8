"""Served measurements: tritonserver with a runner: latency, serving overhead, throughput under
concurrency, BLS cost per step, peak GPU memory, and the perf_analyzer recipe."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..client import GenerationRequest, T2VClient
from ..batcher_delay import set_queue_delay
from ..spec import DENOISER_MAX_BATCH, MP4, SCHEDULER_INSTANCES
from ..step_barrier import BARRIER_METRICS
from ..step_cache import read_step_metrics
from ..server import EmbeddedTritonServer
from ..triton_models.stage_timing import STAGE_TIMING_ENV, parse_stage_lines
from ..video import encode_mp4
from .common import as_client_request, bench_request, environment, load, load_geometry, model_stats, stats_delta, timed, warm_postprocess
from .tracks import served_tracks


class GpuMemoryPoller:
    """Peak GPU memory in use (all processes, nvidia-smi) while the context is open."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s, self.peak_mib, self._stop = interval_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, check=False).stdout
            self.peak_mib = max([self.peak_mib, *(int(v) for v in out.split() if v.isdigit())])

    def __enter__(self) -> "GpuMemoryPoller":
        if self.interval_s > 0 and shutil.which("nvidia-smi"):  # 0: off (the bench's --gpu-poll-s)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def run_served(args: argparse.Namespace, repository: Path) -> dict[str, Any]:
    # here, not at the top: the package imports this module, and `python -m t2vserve.bench.split_batches` runs that one
    from .split_batches import back_to_back_s, executions, own_call_gap_s, summary as split_summary

    geometry = load_geometry(repository)
    request = as_client_request(bench_request(geometry, args.steps, args.frames, (args.precisions or [None])[0], height=args.height, width=args.width))
    results: dict[str, Any] = {"request": request.__dict__, "environment": environment(), "runner": args.runner}
    if args.device == "cuda":
        # the runner entries check their inputs arrive on the GPU; the scheduler, a GPU instance here, checks K/V and
        # every denoiser output itself (t2vserve.placement)
        os.environ["T2V_ASSERT_DEVICE"] = "cuda"
        os.environ["T2V_STUB_NUMPY1"] = "1"  # client/gpu_bench.sh: numpy 1.x for Triton's Python stubs only
    # every runner execution and sampling-loop request logs its stages' milliseconds (read back below) while this
    # switch file exists; the clip is also timed without it (no CUDA synchronisations at the stubs' marks)
    timing_switch = (Path(args.out).parent / "stage-timing.on").resolve()
    timing_switch.touch()
    os.environ[STAGE_TIMING_ENV] = str(timing_switch)
    tag = "" if args.queue_delay_us is None else f"-delay{args.queue_delay_us}us"
    tag += "" if args.gpu_poll_s else "-nopoll"
    tag += "" if args.gpu_metrics else "-nogpumetrics"
    log = Path(args.out).parent / f"bench-tritonserver{tag}.log"
    results["gpu_poll_s"], results["gpu_metrics"] = args.gpu_poll_s, bool(args.gpu_metrics)

    def checkpoint() -> None:  # partial results survive a run cut short
        Path(args.out).with_suffix(".served-partial.json").write_text(json.dumps({"served": results, "partial": True}, indent=2, default=str) + "\n")

    if args.queue_delay_us is not None:  # a latency/throughput trade-off measured against the generated default
        results["denoiser_queue_delay_us"] = args.queue_delay_us
        results["queue_delay_configs"] = set_queue_delay(repository, args.queue_delay_us)
    pool = max(2048, geometry.transfer_pool_bytes(request.height, request.width, request.num_frames) // 2**20) if args.device == "cuda" else None
    results["cuda_memory_pool_mb"] = pool
    denoiser = geometry.tracks[request.precision or geometry.default_precision][0]
    load_start = time.perf_counter()
    extra = () if args.gpu_metrics else ("--allow-gpu-metrics=false",)
    with GpuMemoryPoller(args.gpu_poll_s) as memory, EmbeddedTritonServer(repository, runner=args.runner, log_path=log, cuda_memory_pool_mb=pool,
                                                                       startup_timeout_s=900, extra_args=extra) as server:
        results["start_to_ready_s"] = time.perf_counter() - load_start  # model load + warm-up (compiles)
        print(f"READY after {results['start_to_ready_s']:.1f} s", flush=True)
        with T2VClient(server.grpc_url) as client:
            start = time.perf_counter()
            first = client.generate(request)
            results["first_request_s"] = time.perf_counter() - start  # after READY: the runners warmed up at load
            print(f"first request {results['first_request_s']:.1f} s", flush=True)
            results["postprocess_warmup_s"] = warm_postprocess(server.grpc_url, first.video, request.fps or geometry.presets.fps)
            if args.precisions:  # the tracks side by side first: what a short call must not lose
                results["tracks"] = served_tracks(server.grpc_url, geometry, args, log)
                checkpoint()
            if args.concurrency:
                start = time.perf_counter()
                # every batch size the batcher forms appears (at most SCHEDULER_INSTANCES requests denoise at once): any
                # first-time cost of a size (a compile the warm-up missed, cuDNN/cuBLAS set-up) is paid here, not timed
                load(server.grpc_url, request, min(max(args.concurrency), SCHEDULER_INSTANCES), 1)
                results["warmup_batched_s"] = time.perf_counter() - start
            checkpoint()
            before, log_offset = model_stats(server.grpc_url), log.stat().st_size
            latencies = takes(client, request, "take", args.repeats)
            after = model_stats(server.grpc_url)
            time.sleep(0.5)  # the stubs' last log lines reach the server log
            with log.open(errors="replace") as text:  # the timed requests' stages, as each entry's stub saw them
                text.seek(log_offset)
                results["stage_ms_per_record"] = parse_stage_lines(text.read())
            # the same clip with the stubs' stage timing off: what a deployment (which runs without it) waits
            timing_switch.unlink()
            results["served_clip_untimed_s"] = statistics.median(takes(client, request, "untimed take", args.repeats))
            results["served_clip_mp4_only_untimed_s"] = statistics.median(takes(client, request, "untimed mp4 take", args.repeats, (MP4,)))
            timing_switch.touch()
            # the frames stay on the server (RETURN_FRAMES false): what a client wanting the MP4 only waits, and postprocess's work then
            mp4_before = model_stats(server.grpc_url)
            results["served_clip_mp4_only_s"] = statistics.median(takes(client, request, "mp4 take", args.repeats, (MP4,)))
            results["postprocess_phases_mp4_only_ms"] = stats_delta(mp4_before, model_stats(server.grpc_url), args.repeats).get("postprocess")
            # the same frames' H.264 encode in this process (postprocess runs encode_mp4 in its stub: compare its compute)
            video = client.generate(request).video
            results["encode_mp4_bench_process_s"] = timed(lambda: encode_mp4(video, request.fps or geometry.presets.fps), repeats=3)
        results["served_clip_s"] = statistics.median(latencies)
        n, steps = len(latencies), int(request.steps or 0)
        phases = stats_delta(before, after, n)  # per entry and clip: compute, and its input / infer / output split
        per_request = {k: row["compute_ms"] for k, row in phases.items()}
        results["per_request_compute_ms"], results["per_request_compute_phases_ms"] = per_request, phases
        denoiser_ms = sum(per_request[e] for e in set(sum(geometry.tracks.values(), [])) if e in per_request)
        results["scheduler_overhead_per_step_ms"] = (per_request["scheduler"] - denoiser_ms) / steps
        results["denoiser_step_served_ms"] = denoiser_ms / steps
        throughput: dict[int, float] = {}
        work: dict[int, Any] = {}
        results["throughput_clips_per_s"], results["work_per_clip_by_concurrency"] = throughput, work  # checkpointed as they fill
        own_gap_s: float | None = None  # a lone loop's gap between its calls (concurrency 1): sets the splits' gap
        for concurrency in args.concurrency:
            before, waits_before = model_stats(server.grpc_url), barrier_waits(server.metrics_url)
            log_offset = log.stat().st_size
            throughput[concurrency] = load(server.grpc_url, request, concurrency, args.per_client)
            # where the time went at this concurrency: per clip, each entry's executions, compute, queue, batch sizes
            work[concurrency] = stats_delta(before, model_stats(server.grpc_url), concurrency * args.per_client)
            # the loops' waits at the step barrier (t2vserve.step_barrier), per clip
            work[concurrency]["step_barrier"] = {k: (v - waits_before.get(k, 0.0)) / (concurrency * args.per_client)
                                                 for k, v in barrier_waits(server.metrics_url).items()}
            time.sleep(0.5)  # the stubs' last log lines reach the server log
            with log.open(errors="replace") as text:  # executions that ran back to back where one batch would have held both
                text.seek(log_offset)
                runs = executions(text.read(), denoiser)
            if concurrency == 1:  # one loop: no split possible; its own gap between calls
                own_gap_s = own_call_gap_s(runs)
                work[concurrency]["own_call_gap_ms"] = None if own_gap_s is None else own_gap_s * 1e3
            else:
                work[concurrency]["split_batches"] = split_summary(runs, DENOISER_MAX_BATCH, back_to_back_s(own_gap_s))
            print(f"concurrency {concurrency}: {throughput[concurrency]:.3f} clips/s; {denoiser} per clip: {work[concurrency][denoiser]}", flush=True)
            checkpoint()
        results["denoiser_entries"] = sorted(set(sum(geometry.tracks.values(), [])))
        final = model_stats(server.grpc_url)[denoiser]
        results["denoiser_mean_batch"] = final["inferences"] / max(final["executions"], 1)
        results["peak_gpu_memory_gb"] = memory.peak_mib / 1024
        checkpoint()
        if args.perf_analyzer:
            results["perf_analyzer"] = run_perf_analyzer(args.perf_analyzer, server.grpc_url, Path(args.out).parent, request)
    timing_switch.unlink(missing_ok=True)
    print(f"served clip {results['served_clip_s']:.3f} s; scheduler overhead {results['scheduler_overhead_per_step_ms']:.2f} ms/step", flush=True)
    return results


def takes(client: T2VClient, request: GenerationRequest, label: str, repeats: int, outputs: tuple[str, ...] | None = None) -> list[float]:
    """Seconds of ``repeats`` clips, each with a new prompt (``<prompt>, <label> i``: the text encoder runs each time, as
    in-process; the conditioning cache would skip it); ``outputs``: those only (default the client's)."""
    kwargs = {} if outputs is None else {"outputs": outputs}
    return [client.generate(replace(request, prompt=f"{request.prompt}, {label} {i}"), **kwargs).seconds for i in range(repeats)]


def barrier_waits(metrics_url: str) -> dict[str, float]:
    """The ``scheduler`` loops' step-barrier counters (``BARRIER_METRICS``: waits, waited_s) from Triton's metrics."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        values = read_step_metrics(response.read().decode(), BARRIER_METRICS)
    return {field: value for (field, model), value in values.items() if model == "scheduler"}


def run_perf_analyzer(binary: str, url: str, out_dir: Path, request: GenerationRequest) -> dict[str, Any]:
    """The perf_analyzer recipe (t2vserve.perf) against the same server, with the bench's steps and precision."""
    from dataclasses import asdict

    from .. import perf

    data = perf.input_data(request.precision or "fp16", STEPS=int(request.steps or 0))
    input_file = out_dir / "perf_input.json"
    input_file.write_text(json.dumps(data, indent=2))
    rows = perf.sweep(binary, url, input_file, [1, 2, 4], out_dir, minimum=2)
    table = perf.markdown_table(rows)
    (out_dir / "perf.md").write_text(table)
    print(table, flush=True)
    commands = [" ".join(perf.perf_analyzer_command("perf_analyzer", "localhost:8001", Path("perf_input.json"), c, Path(f"perf_c{c}.csv"), minimum=2)) for c in (1, 2, 4)]
    return {"rows": [asdict(r) for r in rows], "commands": commands, "input_data": data}

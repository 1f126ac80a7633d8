"""Precision tracks side by side (``--precisions bf16,fp8``): denoiser step and clip time of each track,
and which kernels each track's entries ran (what the runners log at load, ``runners.KERNELS_LOG``).

A track the server's runner has no kernels for (int8 under the torch runner) is refused by the
server with INVALID_ARG; the table says so instead of timing another track under its name.
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..client import T2VClient
from ..runners import KERNELS_LOG, make_runner
from ..geometry import ModelGeometry
from .common import as_client_request, bench_request, model_stats, runner_config, timed


def logged_kernels(log: Path) -> dict[str, str]:
    """Entry -> the kernels its runner said it runs, from a tritonserver log."""
    text = log.read_text(errors="replace") if log.exists() else ""
    pattern = rf'(\w+): {re.escape(KERNELS_LOG)}(.*?)"?$'  # Triton quotes the logged message
    return {m.group(1): m.group(2).strip() for m in re.finditer(pattern, text, re.M)}


def served_tracks(url: str, geometry: ModelGeometry, args: Any, log: Path) -> dict[str, dict[str, Any]]:
    """Each of ``args.precisions`` through the server: a warm-up clip, then the median of ``args.repeats`` clips."""
    results: dict[str, dict[str, Any]] = {}
    for track in args.precisions:
        entries = geometry.tracks.get(track, [])
        request = as_client_request(bench_request(geometry, args.steps, args.frames, track, height=args.height, width=args.width))
        row: dict[str, Any] = {"entries": entries}
        try:
            with T2VClient(url) as client:
                start = time.perf_counter()
                client.generate(request)
                row["first_clip_s"] = time.perf_counter() - start
                before = model_stats(url)
                row["clip_s"] = statistics.median(client.generate(request).seconds for _ in range(args.repeats))
                after = model_stats(url)
        except Exception as exc:  # a track this server refuses: say so, time nothing under its name
            message = getattr(exc, "message", None)
            row["refused"] = (message() if callable(message) else str(exc))[:300]
            results[track] = row
            print(f"track {track}: refused: {row['refused']}", flush=True)
            continue
        compute = sum(after[e]["compute_ms"] - before.get(e, {}).get("compute_ms", 0.0) for e in entries if e in after)
        row["denoiser_step_ms"] = compute / args.repeats / int(request.steps or 1)
        kernels = logged_kernels(log)
        row["kernels"] = {e: kernels.get(e, "?") for e in entries}
        results[track] = row
        print(f"track {track}: clip {row['clip_s']:.3f} s, denoiser step {row['denoiser_step_ms']:.1f} ms; {row['kernels']}", flush=True)
    return results


def inprocess_tracks(repository: Path, geometry: ModelGeometry, args: Any, feeds: Callable[[], dict[str, torch.Tensor]]) -> dict[str, dict[str, Any]]:
    """Each track's first denoiser entry as the runner runs it in this process: first call (compile) and step time."""
    cuda = args.device == "cuda"
    results: dict[str, dict[str, Any]] = {}
    for track in args.precisions:
        entry = geometry.tracks[track][0]
        config = runner_config(repository, entry, args.runner)
        runner = make_runner(config["parameters"]["runner"]["string_value"], repository / entry / "1", config)
        row: dict[str, Any] = {"entry": entry, "kernels": runner.kernels}
        inputs = feeds()
        try:
            start = time.perf_counter()
            runner.run(inputs)
            row["first_call_s"] = time.perf_counter() - start
            row["denoiser_step_s"] = timed(lambda: runner.run(inputs), args.step_repeats, 2, cuda)
        except Exception as exc:  # an unavailable track: its reason, no timing
            row["refused"] = str(exc)[:300]
        results[track] = row
        print(f"in-process track {track}: {row}", flush=True)
        del runner
        if cuda:
            torch.cuda.empty_cache()
    return results


def tracks_table(rows: dict[str, dict[str, Any]], served: bool) -> list[str]:
    """Markdown: one row per track, with its kernels and times (vs the first track)."""
    key = "denoiser_step_ms" if served else "denoiser_step_s"
    scale = 1.0 if served else 1e3
    base = next((r[key] * scale for r in rows.values() if key in r), None)
    where = "served (Triton compute per step; clip: gRPC median)" if served else "in-process runner"
    lines = ["", f"| track ({where}) | kernels | denoiser step | vs first track | clip |", "|---|---|---|---|---|"]
    for track, r in rows.items():
        kernels = r.get("kernels", {})
        kernels = "; ".join(f"{e}: {k}" for e, k in kernels.items()) if isinstance(kernels, dict) else kernels
        if "refused" in r:
            lines.append(f"| {track} | {kernels or '-'} | refused: {r['refused'][:120]} | - | - |")
            continue
        step = r[key] * scale
        ratio = f"{base / step:.2f}x" if base else "-"
        clip = f"{r['clip_s']:.3f} s" if "clip_s" in r else "-"
        lines.append(f"| {track} | {kernels} | {step:.1f} ms | {ratio} | {clip} |")
    return lines

#!/usr/bin/env python3
"""Served latency of the denoiser tracks of an exported repository: the teacher (fp16, int8) at the preset's
defaults and at the distilled student's step count, and the student (``distilled``) at its own defaults.

    .venv/bin/python client/track_latency.py REPOSITORY [--repeats 5] [--out outputs/track-latency.json]

Starts its own tritonserver on loopback; one warm-up request per variant, then ``--repeats`` sequential requests
(same prompt, seeds 0..); median seconds per clip, and per clip what the denoiser entries did (Triton statistics).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from t2vserve.bench.common import load_geometry, model_stats, stats_delta  # noqa: E402
from t2vserve.client import GenerationRequest, T2VClient  # noqa: E402
from t2vserve.server import EmbeddedTritonServer  # noqa: E402
from t2vserve.spec import DISTILLED_TRACK  # noqa: E402
from t2vserve.geometry import ModelGeometry

PROMPT = "a red circle moving to the right on a black background"


def variants(geometry: ModelGeometry) -> dict[str, dict]:
    """Every track at its defaults; the full-precision track at the student's step count where there is a student."""
    chosen = {f"{track} (defaults)": {"precision": track} for track in geometry.tracks}
    if DISTILLED_TRACK in geometry.tracks:
        steps = geometry.defaults(precision=DISTILLED_TRACK)["STEPS"]
        full = geometry.tier_precision("full")
        chosen[f"{full} at {steps} steps"] = {"precision": full, "steps": steps}
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    geometry = load_geometry(args.repository)
    entries = {entry for track in geometry.tracks.values() for entry in track}
    results = {}
    with EmbeddedTritonServer(args.repository) as server, T2VClient(server.grpc_url) as client:
        for name, settings in variants(geometry).items():
            client.generate(GenerationRequest(PROMPT, seed=0, **settings))
            before, seconds = model_stats(server.grpc_url), []
            for seed in range(args.repeats):
                start = time.perf_counter()
                client.generate(GenerationRequest(PROMPT, seed=seed, **settings))
                seconds.append(time.perf_counter() - start)
            delta = stats_delta(before, model_stats(server.grpc_url), args.repeats)
            denoisers = {entry: d for entry, d in delta.items() if entry in entries and d["inferences"]}
            results[name] = {"settings": settings, "median_s": statistics.median(seconds), "seconds": seconds, "denoisers": denoisers}
            samples = sum(d["inferences"] for d in denoisers.values())
            batches = ", ".join(f"{entry}: batch sizes {sorted(d['batches'])}" for entry, d in denoisers.items())
            print(f"{name:24s} median {statistics.median(seconds) * 1e3:7.0f} ms/clip; denoiser samples per clip {samples:.0f} ({batches})",
                  flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make quality``: fidelity of each accelerated UNet track against the full-precision reference.

For the fixed prompts and seeds of ``data/quality_set.json``, every clip is generated through the
served pipeline (a real tritonserver, gRPC) with the reference track and with each variant; the
report gives PSNR, SSIM (per frame, averaged) and max abs error per clip and on average, plus
latency and UNet weight bytes, as a markdown table (docs/quality.md) and JSON (docs/quality.json).
The gate (thresholds in the same file) fails the command when a variant's mean PSNR or mean SSIM
falls below them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .client import GenerationRequest, T2VClient
from .export import QUANTIZATION_REPORT
from .metrics import clip_metrics
from .quantize import DATA_DIR, weight_bytes
from .server import DEFAULT_MODEL_REPOSITORY, REPO_ROOT, EmbeddedTritonServer
from .families import DEFAULT_FAMILY, get_family

#: Precision track -> its (single-expert) denoiser entry, of the default family.
TRACK_ENTRIES = {track: entries[0] for track, entries in get_family(DEFAULT_FAMILY).tracks().items()}

QUALITY_SET = DATA_DIR / "quality_set.json"


def load_quality_set(path: Path = QUALITY_SET) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def unet_weight_bytes(repository: Path, track: str) -> int:
    report = repository / TRACK_ENTRIES[track] / "1" / QUANTIZATION_REPORT
    if report.exists():
        return int(json.loads(report.read_text())["weight_bytes"]["int8"])
    return weight_bytes(repository / TRACK_ENTRIES[track] / "1" / "model.onnx")["stored"]


def evaluate(client: T2VClient, quality_set: dict[str, Any], repository: Path, limit: int | None = None) -> dict[str, Any]:
    """Run every (prompt, seed) through the reference and each variant; return the report."""
    reference, variants = quality_set["reference"], quality_set["variants"]
    cases = [(p, s) for p in quality_set["prompts"] for s in quality_set["seeds"]][:limit]
    clips: list[dict[str, Any]] = []
    latency: dict[str, list[float]] = {track: [] for track in [reference, *variants]}
    for prompt, seed in cases:
        results = {}
        for track in [reference, *variants]:
            result = client.generate(GenerationRequest(prompt, seed=seed, precision=track))
            results[track] = result.video
            latency[track].append(result.seconds)
        for track in variants:
            clips.append({"variant": track, "prompt": prompt, "seed": seed, **clip_metrics(results[reference], results[track])})
    summary = {}
    for track in variants:
        rows = [c for c in clips if c["variant"] == track]
        summary[track] = {
            "mean_psnr_db": float(np.mean([c["psnr_db"] for c in rows])),
            "mean_ssim": float(np.mean([c["ssim"] for c in rows])),
            "max_abs_error": int(max(c["max_abs_error"] for c in rows)),
            "mean_latency_s": float(np.mean(latency[track])),
            "latency_ratio": float(np.mean(latency[track]) / np.mean(latency[reference])),
            "weight_bytes": unet_weight_bytes(repository, track),
            "weight_ratio": unet_weight_bytes(repository, track) / unet_weight_bytes(repository, reference),
        }
    return {
        "reference": reference,
        "reference_latency_s": float(np.mean(latency[reference])),
        "reference_weight_bytes": unet_weight_bytes(repository, reference),
        "reference_weight_bytes_fp16": weight_bytes(repository / TRACK_ENTRIES[reference] / "1" / "model.onnx")["fp16_equivalent"],
        "clips": clips,
        "summary": summary,
        "gate": quality_set["gate"],
    }


def gate_failures(report: dict[str, Any]) -> list[str]:
    gate, failures = report["gate"], []
    for track, s in report["summary"].items():
        if s["mean_psnr_db"] < gate["min_mean_psnr_db"]:
            failures.append(f"{track}: mean PSNR {s['mean_psnr_db']:.2f} dB < {gate['min_mean_psnr_db']} dB")
        if s["mean_ssim"] < gate["min_mean_ssim"]:
            failures.append(f"{track}: mean SSIM {s['mean_ssim']:.4f} < {gate['min_mean_ssim']}")
    return failures


def markdown(report: dict[str, Any], command: str) -> str:
    ref = report["reference"]
    lines = [
        "# UNet precision vs fidelity",
        "",
        f"Reference track `{ref}` (full precision: FP32 under ONNX Runtime on this CPU runner). Every clip goes",
        "through the served pipeline (tritonserver, gRPC, same prompt and seed per row). Command: `" + command + "`.",
        "",
        "| variant | prompt | seed | PSNR (dB) | SSIM | max abs error |",
        "|---|---|---|---|---|---|",
    ]
    for c in report["clips"]:
        lines.append(f"| {c['variant']} | {c['prompt']} | {c['seed']} | {c['psnr_db']:.2f} | {c['ssim']:.4f} | {c['max_abs_error']} |")
    lines += [
        "",
        "| variant | mean PSNR (dB) | mean SSIM | max abs error | latency (s) | latency vs reference | UNet weights (MB) | weights vs reference |",
        "|---|---|---|---|---|---|---|---|",
        f"| {ref} (reference) | - | - | - | {report['reference_latency_s']:.2f} | 1.00 | "
        f"{report['reference_weight_bytes'] / 1e6:.2f} FP32 ({report['reference_weight_bytes_fp16'] / 1e6:.2f} as FP16) | 1.00 |",
    ]
    for track, s in report["summary"].items():
        lines.append(
            f"| {track} | {s['mean_psnr_db']:.2f} | {s['mean_ssim']:.4f} | {s['max_abs_error']} | {s['mean_latency_s']:.2f} "
            f"| {s['latency_ratio']:.2f} | {s['weight_bytes'] / 1e6:.2f} | {s['weight_ratio']:.2f} |"
        )
    gate = report["gate"]
    failures = gate_failures(report)
    lines += ["", f"Gate: mean PSNR >= {gate['min_mean_psnr_db']} dB and mean SSIM >= {gate['min_mean_ssim']}: "
              + ("**pass**" if not failures else "**FAIL** (" + "; ".join(failures) + ")")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--quality-set", type=Path, default=QUALITY_SET)
    parser.add_argument("--limit", type=int, default=None, help="only the first N (prompt, seed) cases")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "quality.md", help="markdown report; JSON beside it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    command = "make quality" if args.limit is None else f"python -m t2vserve.quality --limit {args.limit}"
    start = time.perf_counter()
    log_path = REPO_ROOT / "outputs" / "quality-tritonserver.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with EmbeddedTritonServer(args.repository, log_path=log_path) as server:
        with T2VClient(server.grpc_url, "grpc") as client:
            report = evaluate(client, load_quality_set(args.quality_set), args.repository, args.limit)
    text = markdown(report, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(text)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')} in {time.perf_counter() - start:.0f} s")
    failures = gate_failures(report)
    for failure in failures:
        print(f"quality gate failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""``make quality``: fidelity and prompt adherence of each precision track, on the trained demo model.

For the fixed prompts (shapes-world combinations seen in training and held out of it) and seeds of
``data/quality_set.json``, every clip is generated through the served pipeline (a real tritonserver,
gRPC) with the reference track and with each variant. The report gives PSNR, SSIM (per frame,
averaged) and max abs error against the reference per clip and on average, the adherence detector's
score of every track (seen and held-out prompts), latency and UNet weight bytes, as markdown
(docs/quality.md) and JSON (docs/quality.json). The gate (thresholds in the same file) fails the
command when a variant's mean PSNR or SSIM falls below them or its adherence drops by more than
the allowed points against the reference.
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

from ..client import GenerationRequest, T2VClient
from ..export import QUANTIZATION_REPORT
from .adherence import adherence, matches, read_clip
from .metrics import clip_metrics
from ..quantize import DATA_DIR, weight_bytes
from ..server import DEFAULT_MODEL_REPOSITORY, REPO_ROOT, EmbeddedTritonServer
from ..families import DEFAULT_FAMILY, get_family

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
    tracks = [reference, *variants]
    cases = [(p, s) for p in quality_set["prompts"] for s in quality_set["seeds"]][:limit]
    clips: list[dict[str, Any]] = []
    readings: list[dict[str, Any]] = []
    latency: dict[str, list[float]] = {track: [] for track in tracks}
    for entry, seed in cases:
        results = {}
        for track in tracks:
            result = client.generate(GenerationRequest(entry["prompt"], seed=seed, precision=track))
            results[track] = result.video
            latency[track].append(result.seconds)
            reading = read_clip(result.video)
            readings.append({"track": track, "prompt": entry["prompt"], "seed": seed, "held_out": entry["held_out"],
                             "reading": reading.as_dict(), "match": matches(reading, entry)})
        for track in variants:
            clips.append({"variant": track, "prompt": entry["prompt"], "seed": seed, **clip_metrics(results[reference], results[track])})
    scores = {
        track: {group: adherence(r["match"] for r in readings if r["track"] == track and r["held_out"] == held)
                for group, held in (("seen", False), ("held_out", True))}
        for track in tracks
    }
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
            "adherence_drop_points": adherence_drop(scores[reference], scores[track]),
        }
    return {
        "reference": reference,
        "reference_latency_s": float(np.mean(latency[reference])),
        "reference_weight_bytes": unet_weight_bytes(repository, reference),
        "reference_weight_bytes_fp16": weight_bytes(repository / TRACK_ENTRIES[reference] / "1" / "model.onnx")["fp16_equivalent"],
        "clips": clips,
        "readings": readings,
        "adherence": scores,
        "summary": summary,
        "gate": quality_set["gate"],
    }


def adherence_drop(reference: dict[str, dict[str, float]], variant: dict[str, dict[str, float]]) -> float:
    """Largest drop (percentage points) of the variant's all-attribute adherence vs the reference, seen or held-out."""
    drops = [100 * (reference[g]["all"] - variant[g]["all"]) for g in reference if not np.isnan(reference[g]["all"])]
    return float(max(drops)) if drops else 0.0


def gate_failures(report: dict[str, Any]) -> list[str]:
    gate, failures = report["gate"], []
    for track, s in report["summary"].items():
        if s["mean_psnr_db"] < gate["min_mean_psnr_db"]:
            failures.append(f"{track}: mean PSNR {s['mean_psnr_db']:.2f} dB < {gate['min_mean_psnr_db']} dB")
        if s["mean_ssim"] < gate["min_mean_ssim"]:
            failures.append(f"{track}: mean SSIM {s['mean_ssim']:.4f} < {gate['min_mean_ssim']}")
        if s["adherence_drop_points"] > gate["max_adherence_drop_points"]:
            failures.append(f"{track}: adherence drops {s['adherence_drop_points']:.1f} points > {gate['max_adherence_drop_points']}")
    return failures


def markdown(report: dict[str, Any], command: str) -> str:
    ref = report["reference"]
    lines = [
        "# UNet precision vs fidelity and prompt adherence",
        "",
        f"Model: the trained shapes demo model (`t2vserve/data/trained/`). Reference track `{ref}` (full precision:",
        "FP32 under ONNX Runtime on this CPU runner). Every clip goes through the served pipeline (tritonserver,",
        "gRPC, same prompt and seed per row). Command: `" + command + "`.",
        "",
        "Adherence: share of clips whose detected colour / shape / motion (``t2vserve.quality.adherence``) equals",
        "the prompt's, on combinations seen in training and on held-out ones.",
        "",
        "| track | prompts | clips | colour | shape | motion | all three |",
        "|---|---|---|---|---|---|---|",
    ]
    for track, groups in report["adherence"].items():
        for group, a in groups.items():
            count = sum(1 for r in report["readings"] if r["track"] == track and r["held_out"] == (group == "held_out"))
            if count:
                lines.append(f"| {track} | {group.replace('_', '-')} | {count} | {a['colour']:.0%} | {a['shape']:.0%} | {a['motion']:.0%} | {a['all']:.0%} |")
    lines += [
        "",
        "| variant | prompt | seed | PSNR (dB) | SSIM | max abs error |",
        "|---|---|---|---|---|---|",
    ]
    for c in report["clips"]:
        lines.append(f"| {c['variant']} | {c['prompt']} | {c['seed']} | {c['psnr_db']:.2f} | {c['ssim']:.4f} | {c['max_abs_error']} |")
    lines += [
        "",
        "| variant | mean PSNR (dB) | mean SSIM | max abs error | adherence drop (points) | latency (s) | latency vs reference | UNet weights (MB) | weights vs reference |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {ref} (reference) | - | - | - | - | {report['reference_latency_s']:.2f} | 1.00 | "
        f"{report['reference_weight_bytes'] / 1e6:.2f} FP32 ({report['reference_weight_bytes_fp16'] / 1e6:.2f} as FP16) | 1.00 |",
    ]
    for track, s in report["summary"].items():
        lines.append(
            f"| {track} | {s['mean_psnr_db']:.2f} | {s['mean_ssim']:.4f} | {s['max_abs_error']} | {s['adherence_drop_points']:.1f} | {s['mean_latency_s']:.2f} "
            f"| {s['latency_ratio']:.2f} | {s['weight_bytes'] / 1e6:.2f} | {s['weight_ratio']:.2f} |"
        )
    gate = report["gate"]
    failures = gate_failures(report)
    lines += ["", f"Gate: mean PSNR >= {gate['min_mean_psnr_db']} dB, mean SSIM >= {gate['min_mean_ssim']} and adherence "
              f"drop <= {gate['max_adherence_drop_points']} points (all three attributes, seen or held-out): "
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

"""``make quality``: fidelity, prompt adherence and cost of each track (``variants.py``), on the trained demo model.

For the fixed prompts (shapes-world combinations seen in training and held out of it) and seeds of
``data/quality_set.json``, every clip is generated through the served pipeline (a real tritonserver,
gRPC) with the family's reference track and with each variant (a named set of request overrides:
PRECISION, STEP_CACHE, ...). Per variant: PSNR, SSIM (per frame, averaged) and max abs error against
the reference clip (an identical clip counts as IDENTICAL_PSNR_DB in the mean), the adherence
detector's score (seen and held-out prompts) and its drop against the reference, denoiser weight
bytes, denoiser calls per clip and milliseconds per call (Triton's statistics of the denoiser
entries), clip latency and speed-up, as markdown (docs/quality.md) and JSON (docs/quality.json). The gate (thresholds in the same file) is judged for every variant; it fails the
command only for variants offered by default (``"default": true``).
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

from ..client import T2VClient
from ..demo import default_repository, stage_times
from ..export import QUANTIZATION_REPORT, demo_model_dir, export_model
from ..families import DEFAULT_FAMILY, FAMILIES, get_family
from ..quantize import weight_bytes
from ..server import DEFAULT_MODEL_REPOSITORY, REPO_ROOT, EmbeddedTritonServer
from ..geometry import GEOMETRY_FILE, ModelGeometry
from .adherence import adherence, matches, read_clip
from .metrics import IDENTICAL_PSNR_DB, clip_metrics, mean_psnr_db
from .variants import QUALITY_SET, Variant, family_variants, load_quality_set

__all__ = ["QUALITY_SET", "evaluate", "gate_failures", "load_quality_set", "markdown", "verdicts"]


def entry_weight_bytes(repository: Path, entry: str) -> int:
    """Stored weight bytes of a denoiser entry (a quantized entry: its quantization report's 8-bit weights)."""
    report = repository / entry / "1" / QUANTIZATION_REPORT
    if report.exists():
        data = json.loads(report.read_text())
        return int(data["weight_bytes"][data["format"]])
    return weight_bytes(repository / entry / "1" / "model.onnx")["stored"]


class DenoiserMeter:
    """Denoiser executions and compute milliseconds between two calls (Triton's statistics of every denoiser entry)."""

    def __init__(self, url: str, geometry: ModelGeometry) -> None:
        self.url, self.entries = url, sorted({e for entries in geometry.tracks.values() for e in entries})
        self.last = self._totals()

    def _totals(self) -> tuple[int, float]:
        stats = stage_times(self.url)
        return sum(stats[e][0] for e in self.entries), sum(stats[e][1] for e in self.entries)

    def delta(self) -> tuple[int, float]:
        """(executions, compute ms) since the previous call."""
        now = self._totals()
        (calls, ms), self.last = (now[0] - self.last[0], now[1] - self.last[1]), now
        return calls, ms


def adherence_drop(reference: dict[str, dict[str, float]], variant: dict[str, dict[str, float]]) -> float:
    """Largest drop (percentage points) of the variant's all-attribute adherence vs the reference, seen or held-out."""
    drops = [100 * (reference[g]["all"] - variant[g]["all"]) for g in reference if not np.isnan(reference[g]["all"])]
    return float(max(drops)) if drops else 0.0


def evaluate(client: T2VClient, quality_set: dict[str, Any], repository: Path, limit: int | None = None) -> dict[str, Any]:
    """Run every (prompt, seed) through the family's reference and each variant; return the report (gRPC client)."""
    geometry = ModelGeometry.load(repository / "scheduler" / "1" / GEOMETRY_FILE)
    reference, variants = family_variants(quality_set, geometry.family)
    tracks: list[Variant] = [reference, *variants]
    cases = [(p, s) for p in quality_set["prompts"] for s in quality_set["seeds"]][:limit]
    clips: list[dict[str, Any]] = []
    readings: list[dict[str, Any]] = []
    costs: dict[str, list[tuple[float, int, float]]] = {t.name: [] for t in tracks}  # (seconds, denoiser calls, compute ms)
    meter = DenoiserMeter(client.url, geometry)
    for entry, seed in cases:
        videos = {}
        for track in tracks:
            result = client.generate(track.request(entry["prompt"], seed))
            videos[track.name] = result.video
            costs[track.name].append((result.seconds, *meter.delta()))
            reading = read_clip(result.video)
            readings.append({"track": track.name, "prompt": entry["prompt"], "seed": seed, "held_out": entry["held_out"],
                             "reading": reading.as_dict(), "match": matches(reading, entry)})
        for track in variants:
            clips.append({"variant": track.name, "prompt": entry["prompt"], "seed": seed, **clip_metrics(videos[reference.name], videos[track.name])})
    scores = {
        t.name: {group: adherence(r["match"] for r in readings if r["track"] == t.name and r["held_out"] == held)
                 for group, held in (("seen", False), ("held_out", True))}
        for t in tracks
    }
    tracks_summary = {}
    for track in tracks:
        seconds, calls, compute_ms = (np.asarray(column, dtype=float) for column in zip(*costs[track.name]))
        weights = sum(entry_weight_bytes(repository, e) for e in track.denoiser_entries(geometry))
        tracks_summary[track.name] = {
            "overrides": track.overrides, "default": track.default, "precision": track.precision(geometry),
            "weight_bytes": weights, "mean_latency_s": float(seconds.mean()), "denoiser_calls_per_clip": float(calls.mean()),
            "denoiser_ms_per_call": float(compute_ms.sum() / max(calls.sum(), 1)), "adherence": scores[track.name],
        }
    ref = tracks_summary[reference.name]
    for track in variants:
        rows, s = [c for c in clips if c["variant"] == track.name], tracks_summary[track.name]
        s.update({
            "mean_psnr_db": mean_psnr_db([c["psnr_db"] for c in rows]),
            "min_psnr_db": float(min(c["psnr_db"] for c in rows)),
            "mean_ssim": float(np.mean([c["ssim"] for c in rows])),
            "max_abs_error": int(max(c["max_abs_error"] for c in rows)),
            "latency_ratio": s["mean_latency_s"] / ref["mean_latency_s"],
            "speedup": ref["mean_latency_s"] / s["mean_latency_s"],
            "weight_ratio": s["weight_bytes"] / ref["weight_bytes"],
            "skipped_steps_per_clip": ref["denoiser_calls_per_clip"] - s["denoiser_calls_per_clip"],
            "adherence_drop_points": adherence_drop(scores[reference.name], scores[track.name]),
        })
    ref_onnx = repository / reference.denoiser_entries(geometry)[0] / "1" / "model.onnx"
    return {
        "family": geometry.family,
        "repository": str(repository.resolve().relative_to(REPO_ROOT) if repository.resolve().is_relative_to(REPO_ROOT) else repository),
        "reference": reference.name,
        "reference_weight_bytes_fp16": weight_bytes(ref_onnx)["fp16_equivalent"] * len(reference.denoiser_entries(geometry)),
        "tracks": tracks_summary,
        "summary": {t.name: tracks_summary[t.name] for t in variants},
        "clips": clips,
        "readings": readings,
        "adherence": scores,
        "gate": quality_set["gate"],
    }


def verdicts(report: dict[str, Any]) -> dict[str, list[str]]:
    """Per variant: the gate's failures (empty: it passes)."""
    gate, out = report["gate"], {}
    for track, s in report["summary"].items():
        failures = []
        if s["mean_psnr_db"] < gate["min_mean_psnr_db"]:
            failures.append(f"{track}: mean PSNR {s['mean_psnr_db']:.2f} dB < {gate['min_mean_psnr_db']} dB")
        if s["mean_ssim"] < gate["min_mean_ssim"]:
            failures.append(f"{track}: mean SSIM {s['mean_ssim']:.4f} < {gate['min_mean_ssim']}")
        if s["adherence_drop_points"] > gate["max_adherence_drop_points"]:
            failures.append(f"{track}: adherence drops {s['adherence_drop_points']:.1f} points > {gate['max_adherence_drop_points']}")
        out[track] = failures
    return out


def gate_failures(report: dict[str, Any]) -> list[str]:
    """The failures that fail the command: those of variants offered by default."""
    return [f for track, failures in verdicts(report).items() if report["summary"][track]["default"] for f in failures]


def _overrides(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k.upper()}={v}" for k, v in overrides.items()) or "server defaults"


def markdown(report: dict[str, Any], command: str) -> str:
    ref, tracks = report["reference"], report["tracks"]
    lines = [
        f"# Denoiser tracks vs fidelity, prompt adherence and cost ({report['family']})",
        "",
        f"Model: `{report['repository']}` (`make quality`: the trained shapes demo model, `t2vserve/data/trained/`). Reference",
        f"track `{ref}` (full precision: FP32 under ONNX Runtime on this CPU runner). Every clip goes through the served",
        "pipeline (tritonserver, gRPC, same prompt and seed per row). Command: `" + command + "`.",
        "",
        f"Mean PSNR counts an identical clip (PSNR infinite, e.g. no step skipped) as {IDENTICAL_PSNR_DB:g} dB.",
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
    lines += ["", "| variant | prompt | seed | PSNR (dB) | SSIM | max abs error |", "|---|---|---|---|---|---|"]
    for c in report["clips"]:
        lines.append(f"| {c['variant']} | {c['prompt']} | {c['seed']} | {c['psnr_db']:.2f} | {c['ssim']:.4f} | {c['max_abs_error']} |")
    judged = verdicts(report)
    lines += [
        "",
        "| track | request | default | PSNR (dB) mean / worst clip | SSIM | adherence seen / held-out | adherence drop (points) | denoiser weights (MB) "
        "| denoiser calls per clip | ms per call | clip (s) | speed-up | gate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in tracks.items():
        a = s["adherence"]
        is_ref = name == ref
        weights = f"{s['weight_bytes'] / 1e6:.2f}" + (f" ({report['reference_weight_bytes_fp16'] / 1e6:.2f} as FP16)" if is_ref else "")
        quality = "reference | - | " if is_ref else f"{s['mean_psnr_db']:.2f} / {s['min_psnr_db']:.1f} | {s['mean_ssim']:.4f} | "
        gate = "-" if is_ref else ("pass" if not judged[name] else "fail") + ("" if s["default"] else " (not default)")
        lines.append(
            f"| {name} | {_overrides(s['overrides'])} | {'yes' if s['default'] else 'no'} | {quality}{a['seen']['all']:.0%} / "
            f"{a['held_out']['all']:.0%} | {'-' if is_ref else format(s['adherence_drop_points'], '.1f')} | {weights} "
            f"| {s['denoiser_calls_per_clip']:.1f} | {s['denoiser_ms_per_call']:.1f} | {s['mean_latency_s']:.2f} "
            f"| {'1.00' if is_ref else format(s['speedup'], '.2f')} | {gate} |"
        )
    gate, failures = report["gate"], gate_failures(report)
    lines += ["", f"Gate: mean PSNR >= {gate['min_mean_psnr_db']} dB, mean SSIM >= {gate['min_mean_ssim']} and adherence "
              f"drop <= {gate['max_adherence_drop_points']} points (all three attributes, seen or held-out), for every track "
              "offered by default: " + ("**pass**" if not failures else "**FAIL** (" + "; ".join(failures) + ")")]
    others = [f for name, fs in judged.items() if not tracks[name]["default"] for f in fs]
    if others:
        lines.append("Tracks not offered by default that miss it (reported, not gated): " + "; ".join(others) + ".")
    return "\n".join(lines) + "\n"


def default_report(family: str, quality_set: Path) -> Path:
    """docs/quality[-<family>][-<tier>].md: the default family's standard set writes docs/quality.md."""
    tier = quality_set.stem.removeprefix("quality_set").lstrip("_")
    parts = ["quality", *([family] if family != DEFAULT_FAMILY else []), *([tier] if tier else [])]
    return REPO_ROOT / "docs" / ("-".join(parts) + ".md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(FAMILIES), default=None,
                        help="export this family's demo model (the trained one where shipped) into its demo repository and evaluate it")
    parser.add_argument("--no-export", action="store_true", help="with --model: the demo repository is exported already")
    parser.add_argument("--repository", type=Path, default=None, help="default: --model's demo repository, else model_repository/")
    parser.add_argument("--quality-set", type=Path, default=QUALITY_SET)
    parser.add_argument("--limit", type=int, default=None, help="only the first N (prompt, seed) cases")
    parser.add_argument("--out", type=Path, default=None, help="markdown report, JSON beside it (default: docs/quality[-<family>][-<tier>].md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    repository = args.repository or (default_repository(args.model) if args.model else DEFAULT_MODEL_REPOSITORY)
    if args.model and not args.no_export:
        export_model(demo_model_dir(args.model), repository, get_family(args.model).tiny_preset)
    given = argv if argv is not None else sys.argv[1:]
    command = "python -m t2vserve.quality " + " ".join(given) if given else "make quality"
    start = time.perf_counter()
    log_path = REPO_ROOT / "outputs" / "quality-tritonserver.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with EmbeddedTritonServer(repository, log_path=log_path) as server:
        with T2VClient(server.grpc_url, "grpc") as client:
            report = evaluate(client, load_quality_set(args.quality_set), repository, args.limit)
    text = markdown(report, command)
    out = args.out or default_report(report["family"], args.quality_set)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(text)
    print(f"wrote {out} and {out.with_suffix('.json')} in {time.perf_counter() - start:.0f} s")
    failures = gate_failures(report)
    for failure in failures:
        print(f"quality gate failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

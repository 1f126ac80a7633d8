"""``python -m t2vserve.train distill``: distil a trained model into its few-step student, optionally evaluate it.

    python -m t2vserve.train distill --out artifacts/distilled-unet3d --device cuda --evaluate --max-seconds 300
    python -m t2vserve.train distill --out /tmp/student --smoke          # CPU: a few updates (make test does)

``--model`` (default: the shipped trained demo model) is copied to ``--out`` (default: distil in place) and the
student written there as ``unet_distilled/`` (weights, ``track_defaults.json``, ``distill_log.json``).
``--evaluate`` compares, in-process on the quality prompts, the teacher at its preset, the teacher on the
distillation grid (the reference), the teacher at the student's step count and the student: adherence, seconds
per clip, denoiser samples per clip, PSNR/SSIM to the reference (``--report``, JSON); ``--evaluate-only``
evaluates the student already in ``--out`` (``client/gpu_distill.sh`` saves the student before evaluating).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from ..export import trained_model_dir
from ..families import DEFAULT_FAMILY, FAMILIES
from ..spec import DISTILLED_TRACK
from .cli import dataclass_flags, given, quiet_logging
from .distill import DISTILL_LOG, DistillConfig, distill, student_component
from .samples import Variant, compare

log = logging.getLogger("t2vserve.distill")
#: A few updates on small clips: the whole path on the CPU in seconds (trains nothing useful).
SMOKE = {"grids": "4,2", "trajectories": 2, "batch": 2, "updates": 3, "warmup": 1, "log_every": 1, "size": 32, "frames": 4}


def evaluation_variants(config: DistillConfig, teacher_track: str, guidance_scale: float) -> list[Variant]:
    """Teacher at its preset, on the distillation grid (the reference), at the student's steps; the student."""
    grids = config.grid_steps()
    return [
        Variant("teacher_preset", teacher_track),
        Variant("teacher_distillation_grid", teacher_track, grids[0], guidance_scale),
        Variant("teacher_student_steps", teacher_track, grids[-1], guidance_scale),
        Variant("student", DISTILLED_TRACK),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default=DEFAULT_FAMILY)
    parser.add_argument("--model", type=Path, default=None, help="trained diffusers directory (default: the shipped demo model)")
    parser.add_argument("--out", type=Path, default=None, help="model directory written with the student (default: --model, in place)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="a few updates on small clips (CPU test of the path)")
    parser.add_argument("--evaluate", action="store_true", help="afterwards: teacher and student side by side on the quality prompts")
    parser.add_argument("--evaluate-only", action="store_true", help="only the evaluation, of the student already in --out")
    parser.add_argument("--eval-seeds", type=int, nargs="*", default=None, help="default: the quality set's")
    parser.add_argument("--eval-prompts", type=int, default=None, help="only the first N quality prompts (default: all)")
    parser.add_argument("--report", type=Path, default=None, help="evaluation JSON (default: <out>/../distill-report.json)")
    dataclass_flags(parser, DistillConfig)
    args = parser.parse_args(argv)
    quiet_logging()
    model_dir = args.model or trained_model_dir(args.family)
    if model_dir is None:
        parser.error("no --model and no shipped trained demo model")
    out_dir = Path(args.out or model_dir)
    if args.evaluate_only:
        summary = json.loads((out_dir / student_component(args.family) / DISTILL_LOG).read_text())
    else:
        config = DistillConfig(**{**(SMOKE if args.smoke else {}), **given(args, DistillConfig)})
        summary = distill(config, model_dir, out_dir, args.device, args.family)
        for r in summary["rounds"]:
            print(f"round {r['teacher_steps']}->{r['student_steps']}: {r['updates']} updates in {r['seconds']:.0f} s "
                  f"(teacher {r['teacher_seconds']:.0f} s), loss {r['first_loss']:.5f} -> {r['final_loss']:.5f}; final latents vs "
                  f"the teacher (relative RMS): " + ", ".join(f"{k} {v:.3f}" for k, v in r["endpoint_error_vs_teacher"].items()))
    if args.evaluate or args.evaluate_only:
        evaluate(out_dir, args.family, summary, args.device, args.eval_seeds, args.eval_prompts,
                 args.report or out_dir.parent / "distill-report.json")
    return 0


def evaluate(out_dir: Path, family: str, summary: dict[str, Any], device: str, seeds: list[int] | None, prompts: int | None,
             path: Path) -> dict[str, Any]:
    """The comparison of ``evaluation_variants`` on the model with the student, written to ``path`` and printed."""
    start = time.perf_counter()
    config = DistillConfig(**summary["config"])
    variants = evaluation_variants(config, summary["teacher_track"], summary["rounds"][0]["teacher_guidance_scale"])
    report = compare(out_dir, family, variants, "teacher_distillation_grid", device, seeds, prompts)
    report["seconds"] = time.perf_counter() - start
    report["distillation"] = {k: v for k, v in summary.items() if k != "history"}
    path.write_text(json.dumps(report, indent=1) + "\n")
    for name, v in report["variants"].items():
        fidelity = f", vs reference {v['vs_reference']['psnr_db']:.1f} dB SSIM {v['vs_reference']['ssim']:.3f}" if v["vs_reference"] else ""
        groups = "; ".join(f"{g} " + " ".join(f"{k} {x:.0%}" for k, x in a.items()) for g, a in v["adherence"].items())
        print(f"{name}: {v['steps']} steps, guidance {v['guidance_scale']:g}, {v['denoiser_samples_per_clip']} UNet samples, "
              f"{v['seconds_per_clip'] * 1e3:.0f} ms/clip{fidelity}; {groups}")
    log.info("evaluation written to %s in %.0f s", path, report["seconds"])
    return report

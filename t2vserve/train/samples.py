"""Sample clips of a trained model in-process and read them with the adherence detector.

Used at the end of training (on the GPU, before the weights come back) and by ``python -m
t2vserve.train --evaluate``; ``compare`` sets sampling variants (tracks, steps, guidance) side by side,
with their fidelity to a reference variant (the distillation's evaluation). ``make quality`` measures
the same things through the server.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..families import get_family
from ..params import ResolvedRequest
from ..pipeline import InProcessPipeline
from ..quality.adherence import adherence, matches, read_clip
from ..quality.metrics import clip_metrics
from ..quality.variants import load_quality_set
from ..geometry import ModelGeometry
from ..video import encode_mp4


def strip(video: np.ndarray, frames: int = 4) -> np.ndarray:
    """``frames`` evenly spaced frames of ``video`` [F, H, W, 3] side by side (1 px gaps)."""
    picks = np.linspace(0, len(video) - 1, frames).round().astype(int)
    gap = np.full((video.shape[1], 1, 3), 255, dtype=np.uint8)
    return np.concatenate([part for i in picks for part in (video[i], gap)][:-1], axis=1)


@dataclass(frozen=True)
class Variant:
    """One way of sampling: a PRECISION track with steps and guidance (None: the track's defaults)."""

    name: str
    precision: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None

    def request(self, geometry: ModelGeometry, prompt: str, seed: int) -> ResolvedRequest:
        d = geometry.defaults(precision=self.precision or geometry.default_precision)
        p = geometry.presets
        return ResolvedRequest(prompt, p.negative_prompt, self.steps or d["STEPS"], self.guidance_scale or d["GUIDANCE_SCALE"], seed,
                               d["HEIGHT"], d["WIDTH"], d["NUM_FRAMES"], d["FPS"], d["PRECISION"], p.sampler)


def on_background(entry: dict[str, Any], background: str | None) -> dict[str, Any]:
    """A quality-set entry with its prompt's background replaced (None: as it is): for models trained on one background."""
    if background is None:
        return entry
    return {**entry, "prompt": re.sub(r"on a \w+ background", f"on a {background} background", entry["prompt"])}


@torch.no_grad()
def sample_quality_set(pipeline: InProcessPipeline, variant: Variant, seeds: list[int], prompts: int | None = None,
                       out_dir: Path | None = None, background: str | None = None) -> list[dict[str, Any]]:
    """One clip per quality prompt (the first ``prompts``; None: all; ``background``: on that background) and seed:
    reading, match, seconds and the video."""
    quality_set, geometry = load_quality_set(), pipeline.geometry
    rows = []
    for entry in (on_background(e, background) for e in quality_set["prompts"][:prompts]):
        for seed in seeds:
            request = variant.request(geometry, entry["prompt"], seed)
            start = time.perf_counter()
            video = pipeline.generate(request)
            seconds = time.perf_counter() - start
            reading = read_clip(video)
            rows.append({**entry, "seed": seed, "reading": reading.as_dict(), "match": matches(reading, entry), "seconds": seconds,
                         "steps": request.steps, "guidance_scale": request.guidance_scale, "video": video})
            if out_dir is not None and seed == seeds[0]:
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / f"{entry['prompt'].replace(' ', '_')}.mp4").write_bytes(encode_mp4(video, request.fps))
    return rows


def adherence_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {group: adherence(r["match"] for r in rows if r["held_out"] == held) for group, held in (("seen", False), ("held_out", True))}


def _pipeline(model_dir: Path, family: str, device: str) -> InProcessPipeline:
    fam = get_family(family)
    components = fam.components(Path(model_dir))
    return InProcessPipeline(components, fam.geometry(components, fam.tiny_preset), device)


def evaluate(model_dir: Path, family: str, device: str = "cpu", seeds: list[int] | None = None,
             out_dir: Path | None = None, precision: str | None = None, guidance_scale: float | None = None,
             background: str | None = None) -> dict[str, Any]:
    """Adherence of ``model_dir`` on the quality prompts (seen and held-out), in-process with torch modules.

    ``precision`` None: the model's default track; ``guidance_scale`` None: the track's default (the tiny preset's);
    ``background``: every prompt on that background (a model trained on one).
    """
    pipeline = _pipeline(model_dir, family, device)
    variant = Variant("evaluate", precision, guidance_scale=guidance_scale)
    rows = sample_quality_set(pipeline, variant, seeds or load_quality_set()["seeds"], out_dir=out_dir, background=background)
    guidance = rows[0]["guidance_scale"]
    return {"guidance_scale": guidance, "summary": adherence_summary(rows),
            "clips": [{k: v for k, v in r.items() if k not in ("video", "steps", "guidance_scale")} for r in rows]}


def compare(model_dir: Path, family: str, variants: list[Variant], reference: str, device: str = "cpu",
            seeds: list[int] | None = None, prompts: int | None = None) -> dict[str, Any]:
    """Each variant on the quality set: adherence, seconds per clip (in-process), denoiser samples per clip, and
    PSNR/SSIM against the ``reference`` variant's clip of the same prompt and seed."""
    pipeline = _pipeline(model_dir, family, device)
    seeds = seeds or load_quality_set()["seeds"]
    sampled = {v.name: sample_quality_set(pipeline, v, seeds, prompts) for v in variants}
    report: dict[str, Any] = {"reference": reference, "seeds": seeds, "clips_per_variant": len(sampled[reference]), "variants": {}}
    for variant in variants:
        rows = sampled[variant.name]
        steps, guidance = rows[0]["steps"], rows[0]["guidance_scale"]
        fidelity = [clip_metrics(ref["video"], row["video"]) for ref, row in zip(sampled[reference], rows)] if variant.name != reference else []
        report["variants"][variant.name] = {
            "precision": variant.precision, "steps": steps, "guidance_scale": guidance,
            "denoiser_samples_per_clip": steps * (2 if guidance > 1 else 1),
            "seconds_per_clip": float(np.mean([r["seconds"] for r in rows[1:] or rows])),  # the first clip warms up
            "adherence": adherence_summary(rows),
            "vs_reference": {key: float(np.mean([min(f[key], 100.0) for f in fidelity])) for key in ("psnr_db", "ssim")} if fidelity else None,
        }
    return report

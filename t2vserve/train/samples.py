"""Sample clips of a trained model in-process and read them with the adherence detector.

Used at the end of training (on the GPU, before the weights come back) and by ``python -m
t2vserve.train --evaluate``; ``make quality`` measures the same thing through the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..families import get_family
from ..params import ResolvedRequest
from ..pipeline import InProcessPipeline
from ..quality.adherence import adherence, matches, read_clip
from ..quality.variants import load_quality_set
from ..video import encode_mp4


def strip(video: np.ndarray, frames: int = 4) -> np.ndarray:
    """``frames`` evenly spaced frames of ``video`` [F, H, W, 3] side by side (1 px gaps)."""
    picks = np.linspace(0, len(video) - 1, frames).round().astype(int)
    gap = np.full((video.shape[1], 1, 3), 255, dtype=np.uint8)
    return np.concatenate([part for i in picks for part in (video[i], gap)][:-1], axis=1)


@torch.no_grad()
def evaluate(model_dir: Path, family: str, device: str = "cpu", seeds: list[int] | None = None,
             out_dir: Path | None = None, precision: str | None = None, guidance_scale: float | None = None) -> dict[str, Any]:
    """Adherence of ``model_dir`` on the quality prompts (seen and held-out), in-process with torch modules.

    ``guidance_scale`` None: the tiny preset's.
    """
    fam = get_family(family)
    components = fam.components(Path(model_dir))
    geometry = fam.geometry(components, fam.tiny_preset)
    pipeline = InProcessPipeline(components, geometry, device)
    quality_set = load_quality_set()
    seeds = seeds or quality_set["seeds"]
    p = geometry.presets
    rows = []
    for entry in quality_set["prompts"]:
        for seed in seeds:
            request = ResolvedRequest(entry["prompt"], p.negative_prompt, p.steps, guidance_scale or p.guidance_scale, seed, p.height, p.width,
                                      p.num_frames, p.fps, precision or geometry.default_precision, p.sampler)
            video = pipeline.generate(request)
            reading = read_clip(video)
            rows.append({**entry, "seed": seed, "reading": reading.as_dict(), "match": matches(reading, entry)})
            if out_dir is not None and seed == seeds[0]:
                out_dir.mkdir(parents=True, exist_ok=True)
                name = entry["prompt"].replace(" ", "_")
                (out_dir / f"{name}.mp4").write_bytes(encode_mp4(video, p.fps))
    summary = {group: adherence(r["match"] for r in rows if r["held_out"] == held) for group, held in (("seen", False), ("held_out", True))}
    return {"guidance_scale": guidance_scale or p.guidance_scale, "summary": summary, "clips": rows}

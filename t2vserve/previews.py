"""Preview frames of a clip being denoised: a tiny per-pixel latent-to-RGB decoder fitted per model at export.

Each latent pixel z (C channels) maps to one RGB value, ``rgb = [1, z, silu(z @ W + b)] @ R``: a
linear projection plus ``HIDDEN`` fixed random SiLU features (W, b drawn from a fixed seed), the
readout R fitted by ridge least squares between latents of encoded clips (the project's procedural
shapes world, fixed seed) and the VAE decoder's frames of those same latents, average-pooled to
latent resolution (for a temporally compressing VAE also averaged over the frames each latent frame
decodes to). The purely linear projection (``HIDDEN`` = 0) is the classic latent preview; on the
tiny demo VAE it stays about 49 uint8 levels off the decode of generated clips, the random features
halve that. Export writes ``t2v_stream/1/preview_projection.json``; the streaming model applies it to
the middle latent frame every PREVIEW_EVERY steps: two small matrix products, no VAE call.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .families import get_family
from .families.base import Uint8Frames
from .spec import VAE_DECODER
from .geometry import ModelGeometry
from .video import to_uint8_frames

PREVIEW_FILE = "preview_projection.json"
#: Clips encoded for the fit (their latent pixels are the samples) and the seed they and the features are drawn with.
FIT_CLIPS = 12
FIT_SEED = 0
#: Random SiLU features beside the linear terms, and the ridge of the least-squares readout.
HIDDEN = 64
RIDGE = 0.1


@dataclass(frozen=True)
class LatentPreview:
    """``rgb = [1, z, silu(z @ hidden_weight + hidden_bias)] @ readout`` per latent pixel z, in [-1, 1]."""

    hidden_weight: list[list[float]]  # [latent channels, HIDDEN]
    hidden_bias: list[float]  # [HIDDEN]
    readout: list[list[float]]  # [1 + latent channels + HIDDEN, 3]
    fit_error: float  # mean |preview - pooled decode| in uint8 levels over the fit clips

    def rgb(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [1, C, f, h, w] -> RGB [f, h, w, 3] in [-1, 1]."""
        pixels = latents[0].float().permute(1, 2, 3, 0)
        readout = torch.tensor(self.readout, dtype=torch.float32, device=latents.device)
        return (_features(pixels, self.hidden_weight, self.hidden_bias).float() @ readout).clamp(-1.0, 1.0)

    def frame(self, latents: torch.Tensor) -> np.ndarray:
        """The preview: the middle latent frame as uint8 [h, w, 3]."""
        middle = self.rgb(latents)[latents.shape[2] // 2]
        return to_uint8_frames(middle.permute(2, 0, 1)[None].cpu().numpy())[0]

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "LatentPreview":
        return cls(**json.loads(Path(path).read_text()))


def pooled_frames(frames: torch.Tensor, geometry: ModelGeometry) -> torch.Tensor:
    """Decoded frames [F, 3, H, W] -> [f, h, w, 3] at latent resolution, one per latent frame.

    A causal VAE with temporal factor t decodes latent frame 0 to frame 0 and latent frame k >= 1 to
    frames (k-1)t+1 .. kt: those frames are averaged.
    """
    pooled = F.avg_pool2d(frames.float(), geometry.vae_scale_factor)
    t = geometry.vae_temporal_factor
    if t > 1:
        groups = [pooled[:1]] + [pooled[1 + k * t: 1 + (k + 1) * t] for k in range((len(pooled) - 1) // t)]
        pooled = torch.stack([group.mean(dim=0) for group in groups])
    return pooled.permute(0, 2, 3, 1)


def _features(pixels: torch.Tensor, weight: Any, bias: Any) -> torch.Tensor:
    """Latent pixels [..., C] -> [..., 1 + C + HIDDEN]: a constant, the channels, the random SiLU features."""
    weight = torch.as_tensor(weight, dtype=pixels.dtype, device=pixels.device)
    bias = torch.as_tensor(bias, dtype=pixels.dtype, device=pixels.device)
    return torch.cat([torch.ones_like(pixels[..., :1]), pixels, F.silu(pixels @ weight + bias)], dim=-1)


def fit_projection(
    latents: list[torch.Tensor], frames: list[torch.Tensor], geometry: ModelGeometry, hidden: int = HIDDEN
) -> LatentPreview:
    """Fit the preview from latents [1, C, f, h, w] to their decoded frames [F, 3, H, W]."""
    x = torch.cat([lat[0].permute(1, 2, 3, 0).reshape(-1, lat.shape[1]) for lat in latents]).double()
    y = torch.cat([pooled_frames(fr, geometry).reshape(-1, 3) for fr in frames]).double().clamp(-1.0, 1.0)
    generator = torch.Generator().manual_seed(FIT_SEED)
    channels = x.shape[1]
    weight = torch.randn(channels, hidden, generator=generator, dtype=x.dtype) / channels**0.5
    bias = torch.randn(hidden, generator=generator, dtype=x.dtype)
    design = _features(x, weight, bias)
    gram = design.T @ design + RIDGE * torch.eye(design.shape[1], dtype=x.dtype)
    readout = torch.linalg.solve(gram, design.T @ y)
    error = float(((design @ readout).clamp(-1.0, 1.0) - y).abs().mean() * 127.5)
    return LatentPreview(weight.tolist(), bias.tolist(), readout.tolist(), round(error, 2))


def fit_clips(geometry: ModelGeometry, count: int = FIT_CLIPS, seed: int = FIT_SEED) -> torch.Tensor:
    """Shapes-world clips [B, F, 3, S, S] in [-1, 1]: 2t+1 frames (t: the VAE's temporal factor), S >= 8 latent pixels."""
    from .train.world import batch

    t = geometry.vae_temporal_factor
    size = max(64, 8 * geometry.vae_scale_factor)
    clips, _, _ = batch(count, random.Random(seed), frames=2 * t + 1, size=size)
    return clips


@torch.no_grad()
def fit_preview(components: Any, geometry: ModelGeometry, count: int = FIT_CLIPS) -> LatentPreview:
    """Fit the projection of a model (components with weights): encode shapes clips, decode them, fit."""
    family = get_family(geometry.family)
    decoder_slot = next(slot for slot in family.slots_of(geometry) if slot.role == VAE_DECODER)
    module = decoder_slot.module(components)
    if not isinstance(module, Uint8Frames):
        raise TypeError(f"{geometry.family}'s {decoder_slot.name} module is a {type(module).__name__}, not Uint8Frames")
    decoder = module.decoder.eval()  # the float frames before the slot's uint8 conversion
    latents = family.encode_clips(components, fit_clips(geometry, count))
    per_clip = [latents[i: i + 1] for i in range(len(latents))]
    return fit_projection(per_clip, [decoder(lat) for lat in per_clip], geometry)

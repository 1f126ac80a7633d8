"""The served pipeline run in-process on torch modules (no Triton): calibration capture and baselines.

Same stages, same loop (``sampling.denoise``) and same K/V packing as the repository; only the
transport differs. Tests compare the served clip against diffusers' own pipeline instead, which
shares none of this code.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .ddim import DDIM
from .families.unet3d import CachedKVUNet, Components, KVProjector, TextEncoderGraph, VaeDecoderGraph
from .params import ResolvedRequest, tokenize_pair
from .sampling import denoise, initial_latents, latents_to_frames_batch
from .spec import ModelGeometry
from .video import to_uint8_frames

#: Called with (sample, timestep, kv) before every UNet step (calibration capture).
UNetObserver = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


class InProcessPipeline:
    """prompt -> uint8 frames with the family's torch modules, on one device."""

    def __init__(self, components: Components, geometry: ModelGeometry, device: str = "cpu") -> None:
        self.components, self.geometry, self.device = components, geometry, torch.device(device)
        self.text_encoder = TextEncoderGraph(components.text_encoder).to(self.device)
        self.kv_projector = KVProjector(components.unet).to(self.device)
        self.unet = CachedKVUNet(components.unet).to(self.device)
        self.vae_decoder = VaeDecoderGraph(components.vae).to(self.device)
        self.ddim = DDIM(geometry.scheduler_config)

    @torch.no_grad()
    def packed_kv(self, prompt: str, negative_prompt: str = "") -> torch.Tensor:
        ids = tokenize_pair(self.components.tokenizer, prompt, negative_prompt, self.geometry.text_max_length)
        return self.kv_projector(self.text_encoder(torch.from_numpy(ids).to(self.device)))

    @torch.no_grad()
    def generate(self, request: ResolvedRequest, observer: UNetObserver | None = None) -> np.ndarray:
        kv = self.packed_kv(request.prompt, request.negative_prompt)

        def unet(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            if observer is not None:
                observer(sample, timestep, kv)
            return self.unet(sample, timestep, kv)

        latents = initial_latents(self.geometry, request.height, request.width, request.num_frames, request.seed, self.device)
        latents = denoise(unet, latents, request.steps, request.guidance_scale, self.ddim)
        frames = self.vae_decoder(latents_to_frames_batch(latents))
        return to_uint8_frames(frames.float().cpu().numpy())

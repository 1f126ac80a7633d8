"""Training the unet3d family's tiny model: frame-wise AutoencoderKL, CLIP text encoder, UNet3D (the scheduler's prediction type).

``t2vserve.train`` drives the loop; this adapter owns what is specific to the family: how clips
become latents (each frame through the 2D VAE, scaled by ``scaling_factor``), how the UNet is called
with text embeddings, and the noising and prediction target of the schedule the server's DDIM samples with.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ddim import DDIM
from ..train.losses import autoencoder_loss
from .unet3d import clip_latents


class UNet3DTrainer:
    """Losses and latents of one unet3d model (components loaded in FP32 on ``device``)."""

    def __init__(self, components: Any, device: torch.device) -> None:
        self.vae: nn.Module = components.vae.to(device).train()
        self.text_encoder: nn.Module = components.text_encoder.to(device).train()
        self.denoiser: nn.Module = components.unet.to(device).train()
        self.tokenizer = components.tokenizer
        schedule = DDIM(components.scheduler_config)  # the server's sampler: one definition of the noise schedule
        self.alphas_cumprod = schedule.alphas_cumprod.to(device)
        self.num_train_timesteps = schedule.num_train_timesteps
        self.prediction_type = schedule.config["prediction_type"]
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"training supports epsilon and v_prediction, not {self.prediction_type!r}")
        self.device = device

    @property
    def saved(self) -> dict[str, nn.Module]:
        """What ``save_pretrained`` writes back, by component directory."""
        return {"vae": self.vae, "text_encoder": self.text_encoder, "unet": self.denoiser}

    # -- stage 1: the VAE --------------------------------------------------------------------------
    @staticmethod
    def _frames(clips: torch.Tensor) -> torch.Tensor:
        return clips.flatten(0, 1)  # [B, F, 3, H, W] -> [B*F, 3, H, W]

    def vae_loss(self, clips: torch.Tensor, foreground_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return autoencoder_loss(self.vae, self._frames(clips), foreground_weight=foreground_weight)

    @torch.no_grad()
    def fit_latent_scale(self, clips: torch.Tensor) -> float:
        """Set ``scaling_factor`` so scaled latents have unit standard deviation (as Stable Diffusion's 0.18215)."""
        latents = self.vae.encode(self._frames(clips)).latent_dist.mode()
        scale = float(1.0 / latents.std())
        self.vae.register_to_config(scaling_factor=scale)
        return scale

    @torch.no_grad()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips [B, F, 3, H, W] in [-1, 1] -> scaled latents [B, C, F, h, w] (the UNet's layout)."""
        return clip_latents(self.vae, clips, sample=True)

    # -- stage 2: text encoder and UNet ------------------------------------------------------------
    def text_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]

    def denoiser_loss(self, latents: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """MSE of the scheduler's prediction type (epsilon or v) at uniform random timesteps."""
        batch = latents.shape[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.num_train_timesteps, (batch,), device=latents.device)
        alpha = self.alphas_cumprod[t].view(batch, 1, 1, 1, 1)
        noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
        target = noise if self.prediction_type == "epsilon" else alpha.sqrt() * noise - (1 - alpha).sqrt() * latents
        prediction = self.denoiser(noisy, t, encoder_hidden_states=text, return_dict=False)[0]
        return F.mse_loss(prediction.float(), target)

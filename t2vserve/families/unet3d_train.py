"""Training the unet3d family's tiny model: frame-wise AutoencoderKL, CLIP text encoder, UNet3D (epsilon).

``t2vserve.train`` drives the loop; this adapter owns what is specific to the family: how clips
become latents (each frame through the 2D VAE, scaled by ``scaling_factor``), how the UNet is called
with text embeddings, and the DDPM noising of the scheduler the server's DDIM samples with.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: KL weight of the VAE objective (latents stay close to a unit Gaussian without blurring the shapes).
VAE_KL_WEIGHT = 1e-5


class UNet3DTrainer:
    """Losses and latents of one unet3d model (components loaded in FP32 on ``device``)."""

    def __init__(self, components: Any, device: torch.device) -> None:
        self.vae: nn.Module = components.vae.to(device).train()
        self.text_encoder: nn.Module = components.text_encoder.to(device).train()
        self.denoiser: nn.Module = components.unet.to(device).train()
        self.tokenizer = components.tokenizer
        config = components.scheduler_config
        betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, config["num_train_timesteps"], dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float().to(device)
        self.num_train_timesteps = int(config["num_train_timesteps"])
        self.device = device

    @property
    def saved(self) -> dict[str, nn.Module]:
        """What ``save_pretrained`` writes back, by component directory."""
        return {"vae": self.vae, "text_encoder": self.text_encoder, "unet": self.denoiser}

    # -- stage 1: the VAE --------------------------------------------------------------------------
    @staticmethod
    def _frames(clips: torch.Tensor) -> torch.Tensor:
        return clips.flatten(0, 1)  # [B, F, 3, H, W] -> [B*F, 3, H, W]

    def vae_loss(self, clips: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        frames = self._frames(clips)
        posterior = self.vae.encode(frames).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        mse = F.mse_loss(recon, frames)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        return mse + F.l1_loss(recon, frames) + VAE_KL_WEIGHT * kl, {"mse": mse.detach(), "kl": kl.detach()}

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
        batch, frames = clips.shape[:2]
        latents = self.vae.encode(self._frames(clips)).latent_dist.sample() * self.vae.config.scaling_factor
        return latents.unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4)

    # -- stage 2: text encoder and UNet ------------------------------------------------------------
    def text_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]

    def denoiser_loss(self, latents: torch.Tensor, text: torch.Tensor, offset_noise: float = 0.1) -> torch.Tensor:
        """Epsilon-prediction MSE at uniform random timesteps (with a little offset noise for flat colours)."""
        batch = latents.shape[0]
        noise = torch.randn_like(latents)
        if offset_noise:
            noise = noise + offset_noise * torch.randn(batch, latents.shape[1], 1, 1, 1, device=latents.device)
        t = torch.randint(0, self.num_train_timesteps, (batch,), device=latents.device)
        alpha = self.alphas_cumprod[t].view(batch, 1, 1, 1, 1)
        noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
        prediction = self.denoiser(noisy, t, encoder_hidden_states=text, return_dict=False)[0]
        return F.mse_loss(prediction.float(), noise)

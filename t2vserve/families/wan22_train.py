"""Training the wan22 family's tiny model: the z48 causal video VAE, the UMT5 text encoder, the transformer (flow matching).

``t2vserve.train`` drives the loop; this adapter owns what is Wan-specific: clips go through the 3D
VAE whole and are normalised per channel with the ``latents_mean``/``latents_std`` the adapter fits
(the served decoder un-normalises with them, as ``WanPipeline`` does); text embeddings are zero after
each prompt's tokens (the served text encoder's ``TextEncoderGraph``); the transformer predicts the
flow velocity ``noise - x0`` at sigmas drawn with the scheduler's ``flow_shift``, so training sees
noise levels as often as the served UniPC/Euler trajectories visit them. Only the TI2V-5B style (one
transformer) is trained.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..train.losses import autoencoder_loss
from .wan22_modules import TextEncoderGraph


class Wan22Trainer:
    """Losses and latents of one wan22 model (components loaded in FP32 on ``device``)."""

    def __init__(self, components: Any, device: torch.device) -> None:
        if (components.model_index.get("transformer_2") or [None])[0]:
            raise NotImplementedError("training covers the one-transformer (TI2V-5B style) wan22 model")
        self.vae: nn.Module = components.vae.to(device).train()
        self.text_encoder: nn.Module = components.text_encoder.to(device).train()
        self.denoiser: nn.Module = components.transformer.to(device).train()
        self.tokenizer = components.tokenizer
        self.text = TextEncoderGraph(self.text_encoder, self.tokenizer.pad_token_id)
        config = components.scheduler_config
        self.shift = float(config.get("flow_shift", 1.0))
        self.num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        self.device = device
        self._latent_stats = self._stats()

    @property
    def saved(self) -> dict[str, nn.Module]:
        """What ``save_pretrained`` writes back, by component directory."""
        return {"vae": self.vae, "text_encoder": self.text_encoder, "transformer": self.denoiser}

    # -- stage 1: the VAE --------------------------------------------------------------------------
    @staticmethod
    def _video(clips: torch.Tensor) -> torch.Tensor:
        return clips.transpose(1, 2)  # [B, F, 3, H, W] -> [B, 3, F, H, W]

    def vae_loss(self, clips: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return autoencoder_loss(self.vae, self._video(clips))

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The config's per-channel latent mean and std as [1, z, 1, 1, 1] tensors on the device."""
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean, device=self.device).view(shape)
        std = torch.tensor(self.vae.config.latents_std, device=self.device).view(shape)
        return mean, std

    @torch.no_grad()
    def fit_latent_scale(self, clips: torch.Tensor) -> float:
        """Set ``latents_mean``/``latents_std`` per channel from the latents of ``clips``; returns their mean std."""
        latents = self.vae.encode(self._video(clips)).latent_dist.mode().float()
        mean = latents.mean(dim=(0, 2, 3, 4))
        std = latents.std(dim=(0, 2, 3, 4)).clamp(min=1e-3)
        self.vae.register_to_config(latents_mean=[round(float(v), 5) for v in mean],
                                    latents_std=[round(float(v), 5) for v in std])
        self._latent_stats = self._stats()  # read back from the config: what the served decoder will use
        return float(std.mean())

    @torch.no_grad()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips [B, F, 3, H, W] in [-1, 1] -> normalised latents [B, z, f, h, w] (WanPipeline's)."""
        mean, std = self._latent_stats
        return (self.vae.encode(self._video(clips)).latent_dist.sample() - mean) / std

    # -- stage 2: text encoder and transformer -----------------------------------------------------
    def text_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids)

    def denoiser_loss(self, latents: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Flow-matching MSE: x_s = (1 - s) x0 + s noise, target noise - x0, s drawn through ``flow_shift``."""
        batch = latents.shape[0]
        u = torch.rand(batch, device=latents.device)
        sigma = self.shift * u / (1 + (self.shift - 1) * u)
        s = sigma.view(batch, 1, 1, 1, 1)
        noise = torch.randn_like(latents)
        noisy = (1 - s) * latents + s * noise
        prediction = self.denoiser(noisy, sigma * self.num_train_timesteps, encoder_hidden_states=text, return_dict=False)[0]
        return F.mse_loss(prediction.float(), noise - latents)

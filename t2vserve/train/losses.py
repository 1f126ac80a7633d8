"""Objectives shared by the families' training adapters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: KL weight of the VAE objective (latents stay close to a unit Gaussian without blurring the shapes).
VAE_KL_WEIGHT = 1e-5


def autoencoder_loss(vae: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MSE + L1 reconstruction of ``images`` through a sampled latent, plus a light KL term (per latent element)."""
    posterior = vae.encode(images).latent_dist
    recon = vae.decode(posterior.sample()).sample
    mse = F.mse_loss(recon, images)
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    return mse + F.l1_loss(recon, images) + VAE_KL_WEIGHT * kl, {"mse": mse.detach(), "kl": kl.detach()}

"""Objectives shared by the families' training adapters."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: KL weight of the VAE objective (latents stay close to a unit Gaussian without blurring the shapes).
VAE_KL_WEIGHT = 1e-5


def autoencoder_loss(vae: nn.Module, images: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     foreground_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MSE + L1 reconstruction of ``images`` through a sampled latent, plus a light KL term (per latent element).

    ``decode``: latents -> reconstruction (default ``vae.decode(z).sample``; a VAE whose decode clamps its output
    passes its unclamped decoder, or every value beyond the clamp gets no gradient). ``foreground_weight`` k > 0:
    each pixel's errors weigh 1 + k |pixel - its frame's mean colour| (normalised to mean 1), so a small shape on a
    flat background is not outweighed by the background (the shapes world's shapes cover about 5 % of a frame).
    ``images``: [N, 3, H, W] or [B, 3, F, H, W]; the reported ``mse`` is unweighted.
    """
    posterior = vae.encode(images).latent_dist
    recon = (decode or (lambda z: vae.decode(z).sample))(posterior.sample())
    error = recon.float() - images.float()  # in FP32 under autocast too
    weight = torch.ones_like(error[:, :1])
    if foreground_weight:
        weight = 1 + foreground_weight * (images.float() - images.float().mean(dim=(-2, -1), keepdim=True)).abs().mean(dim=1, keepdim=True)
        weight = weight / weight.mean()
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    loss = (weight * error.square()).mean() + (weight * error.abs()).mean() + VAE_KL_WEIGHT * kl
    return loss, {"mse": error.square().mean().detach(), "kl": kl.detach()}

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


#: ``TrainConfig`` fields of the wan22 demo model's training (``Wan22Family.training_recipe``), measured on the CPU
#: (docs/bench/train-wan22-cpu.md). The foreground weighting: without it the z48 VAE's frames stay background-only
#: for hundreds of steps (shapes' MSE 0.85 after 300 steps of 8 clips; 0.47 with it). Steps and the VAE's share of
#: ``--max-seconds``, for one GPU call with ``--max-seconds 500``: the VAE at its measured 5.5 steps/s of 32 clips
#: on an H100 (1,250 steps, 227 s; stopped at 225 s), the transformer's 2,500 steps of 64 in the remaining 275 s
#: (estimated 9-10 steps/s; where slower, the deadline stops it and the schedule follows the clock).
TRAINING_RECIPE: dict[str, Any] = {"vae_foreground_weight": 10.0, "vae_steps": 1250, "vae_share": 0.45, "steps": 2500}


def decode_unclamped(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """``vae.decode(latents).sample`` before its final clamp to [-1, 1] (what the VAE is trained on).

    ``AutoencoderKLWan`` clamps its output, so every value beyond [-1, 1] gets no gradient: the shapes
    world's black and white backgrounds sit at exactly -1 and +1, a decoder that overshoots them stops
    learning there, and a shape drawn over such a region never gets any gradient either (the VAE stalls
    at background-only frames). The decoder's per-latent-frame outputs are caught by a hook and put back
    together as ``_decode`` does (concatenated in time, unpatchified); the clamp of that equals the decode.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    chunks: list[torch.Tensor] = []
    handle = vae.decoder.register_forward_hook(lambda _module, _inputs, output: chunks.append(output))
    try:
        vae.decode(latents)
    finally:
        handle.remove()
    video = torch.cat(chunks, dim=2)
    return unpatchify(video, patch_size=vae.config.patch_size) if vae.config.patch_size else video


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

    def vae_loss(self, clips: torch.Tensor, foreground_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return autoencoder_loss(self.vae, self._video(clips), lambda z: decode_unclamped(self.vae, z), foreground_weight)

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
        """Clips [B, F, 3, H, W] in [-1, 1] -> normalised latents [B, z, f, h, w] (WanPipeline's).

        The posterior's mode, as Wan's own VAE encodes (its ``encode`` returns ``mu``) and as the statistics
        are fitted: the tiny VAE's posterior std stays near its initial 1 while the per-channel spread of
        the mode is 0.2-2, so a sample divided by that spread was 40-85 % noise (normalised variance 2-12
        instead of 1) that the transformer cannot predict (its loss sat at 2.56 on the GPU).
        """
        mean, std = self._latent_stats
        return (self.vae.encode(self._video(clips)).latent_dist.mode() - mean) / std

    # -- stage 2: text encoder and transformer -----------------------------------------------------
    def text_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The served text encoder's output [B, 512, D], computed over the batch's longest prompt only.

        Positions after a prompt's tokens are masked out of attention and zeroed, so the encoder run on
        the first ``n`` ids and zero-padded back equals the full run (tested); the 512-token self-attention
        it skips was most of a training step's time on the CPU (1.5 s of CPU for 16 captions).
        """
        length = int(input_ids.ne(self.text.pad_token_id).sum(dim=1).max())
        hidden = self.text(input_ids[:, :max(length, 1)])
        return F.pad(hidden, (0, 0, 0, input_ids.shape[1] - hidden.shape[1]))

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

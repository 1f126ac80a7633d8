"""Model family "unet3d": ModelScope text-to-video-ms / ZeroScope (CLIP text encoder, UNet3D, AutoencoderKL).

Everything family-specific lives here: the tiny demo configuration, loading a diffusers-format
directory, the packed cross-attention K/V (projector and the UNet that consumes it) and the slot
declarations (``UNet3DFamily.slots``). The scheduler, the repository and the client only see
``ModelGeometry`` and the slots, through the registry.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import DENOISER, DISTILLED_TRACK, KV_PROJECTOR, PRESETS, TEXT_ENCODER, VAE_DECODER
from ..geometry import KVLayout, ModelGeometry
from .base import DECODER_IO, DENOISER_IO, PACKED_KV, TEXT_IDS, TEXT_OUT, Family, Slot, Uint8Frames, load_model, read_scheduler_config

#: The tiny random-initialised demo model: same architecture as ModelScope, toy widths.
TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,  # diffusers' legacy name: this is the number of heads
}
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
TINY_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 32,
}
#: ModelScope text-to-video-ms dimensions (benchmarks: random weights, speed does not depend on their values).
MODELSCOPE_UNET: dict[str, Any] = {
    "sample_size": 32, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "cross_attention_dim": 1024,
    "attention_head_dim": 64, "norm_num_groups": 32,
}
MODELSCOPE_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2, "latent_channels": 4, "sample_size": 512, "scaling_factor": 0.18215,
}
MODELSCOPE_TEXT: dict[str, Any] = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
                                   "max_position_embeddings": 77, "projection_dim": 1024, "hidden_act": "gelu"}
#: ModelScope text-to-video-ms's scheduler settings.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
#: The trained demo model's schedule: zero terminal SNR, v-prediction, trailing timesteps (Lin et al.
#: 2024). With ModelScope's schedule the first of 10 steps is t=901, where a training latent keeps
#: 12 % of the clean latent's amplitude: the model learnt to read the background and the object's
#: path from the noise, and sampled clips followed the seed, not the prompt (motion right in 25 %).
TRAINED_SCHEDULER_CONFIG: dict[str, Any] = {
    **SCHEDULER_CONFIG, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
}


# --------------------------------------------------------------------------------------------------
# Packed cross-attention K/V
# --------------------------------------------------------------------------------------------------
def cross_attention_modules(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every attention layer of the UNet that attends to the text, in module order."""
    from diffusers.models.attention_processor import Attention

    return [(n, m) for n, m in unet.named_modules() if isinstance(m, Attention) and m.is_cross_attention]


def kv_layout(unet: nn.Module) -> KVLayout:
    layers = []
    for name, attn in cross_attention_modules(unet):
        heads = attn.heads
        layers.append((name, heads, attn.to_k.out_features // heads))
    return KVLayout.from_layers(layers)


class KVProjector(nn.Module):
    """Text embeddings [B, S, D] -> packed K/V [B, S, kv_width] of every cross-attention layer."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        attns = [m for _, m in cross_attention_modules(unet)]
        self.to_k = nn.ModuleList(a.to_k for a in attns)
        self.to_v = nn.ModuleList(a.to_v for a in attns)

    def forward(self, text_embeds: torch.Tensor) -> torch.Tensor:
        parts = []
        for to_k, to_v in zip(self.to_k, self.to_v):
            parts += [to_k(text_embeds), to_v(text_embeds)]
        return torch.cat(parts, dim=-1)


class _KVHolder:
    """The packed K/V of the forward pass in progress; None means "project from the text as usual"."""

    kv: torch.Tensor | None = None


class CachedKVAttnProcessor:
    """Cross-attention that reads K and V from the packed tensor instead of projecting the text.

    Queries of all frames of one sample attend to that sample's K/V, so the frames are folded into
    the query length: no per-frame copy of K/V (the stock UNet3D repeats the text once per frame).
    """

    def __init__(self, holder: _KVHolder, offset: int, inner_dim: int) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.holder, self.offset, self.inner_dim = holder, offset, inner_dim
        self.fallback = AttnProcessor2_0()

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None, **kw):
        kv = self.holder.kv
        if kv is None:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, **kw)
        if attention_mask is not None or attn.group_norm is not None or attn.spatial_norm is not None:
            raise NotImplementedError("cached K/V supports the plain cross-attention of UNet3D only")
        batch_frames, tokens, _ = hidden_states.shape
        batch, heads, head_dim = kv.shape[0], attn.heads, self.inner_dim // attn.heads
        key = kv[..., self.offset : self.offset + self.inner_dim]
        value = kv[..., self.offset + self.inner_dim : self.offset + 2 * self.inner_dim]
        query = attn.to_q(hidden_states).reshape(batch, -1, heads, head_dim).transpose(1, 2)
        key = key.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        value = value.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).reshape(batch_frames, tokens, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _install_cached_kv(unet: nn.Module, layout: KVLayout) -> _KVHolder:
    """Install the cached-K/V processors once per UNet; every wrapper of it shares one holder."""
    holder = getattr(unet, "_t2v_kv_holder", None)
    if holder is None:
        holder = _KVHolder()
        for (_, attn), layer in zip(cross_attention_modules(unet), layout.layers):
            attn.set_processor(CachedKVAttnProcessor(holder, layer.offset, layer.inner_dim))
        unet._t2v_kv_holder = holder
    return holder


class CachedKVUNet(nn.Module):
    """The UNet fed packed K/V: (sample, timestep[B], kv) -> noise prediction.

    Installs ``CachedKVAttnProcessor`` on the wrapped UNet's cross-attention layers; they fall back
    to the stock computation whenever the UNet is called directly with text embeddings.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.layout = kv_layout(unet)
        self.holder = _install_cached_kv(unet, self.layout)
        self.cross_attention_dim = unet.config.cross_attention_dim

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        # The stock forward still repeats encoder_hidden_states per frame; give it one dummy token.
        dummy_text = kv.new_zeros(kv.shape[0], 1, self.cross_attention_dim)
        self.holder.kv = kv
        try:
            return self.unet(sample, timestep, encoder_hidden_states=dummy_text, return_dict=False)[0]
        finally:
            self.holder.kv = None


class TextEncoderGraph(nn.Module):
    """input_ids [B, S] -> last hidden state [B, S, D]."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]


def clip_latents(vae: nn.Module, clips: torch.Tensor, sample: bool = False) -> torch.Tensor:
    """Clips [B, F, 3, H, W] in [-1, 1] -> scaled latents [B, C, F, h, w] (the UNet's layout), frame by frame;
    ``sample``: a draw from the posterior (training), else its mode."""
    batch, frames = clips.shape[:2]
    posterior = vae.encode(clips.flatten(0, 1)).latent_dist
    latents = (posterior.sample() if sample else posterior.mode()) * vae.config.scaling_factor
    return latents.unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4)


class VaeDecoderGraph(nn.Module):
    """Latents [1, C, F, h, w] -> frames [F, 3, H, W] in about [-1, 1] (the frames are the 2D VAE's batch)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        frames = latents[0].permute(1, 0, 2, 3)
        return self.vae.decode(frames / self.scaling_factor, return_dict=False)[0]


# --------------------------------------------------------------------------------------------------
# The family declaration
# --------------------------------------------------------------------------------------------------
#: PRECISION -> the UNet entry. "fp16" is the full-precision UNet: an FP16 TensorRT engine on GPU
#: hosts, FP32 under ONNX Runtime; "int8" and "fp8" its Q/DQ twins (INT8; E4M3 for Hopper); "distilled" the
#: guidance- and step-distilled student (``t2vserve.train.distill``), where the model directory has ``unet_distilled/``.
TRACKS = {"int8": ["unet_int8"], "fp8": ["unet_fp8"], "fp16": ["unet"], DISTILLED_TRACK: ["unet_distilled"]}


class UNet3DFamily(Family):
    name = "unet3d"
    component_names = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
    default_precision = "int8"
    full_size_preset = "modelscope"
    tiny_preset = "tiny"
    reference_dtype = torch.float16

    def tracks(self, experts: int = 1) -> dict[str, list[str]]:
        return TRACKS

    def slots(self, experts: int = 1) -> tuple[Slot, ...]:
        if experts != 1:
            raise ValueError("unet3d models have one UNet")
        return (
            Slot("text_encoder", TEXT_ENCODER, (TEXT_IDS,), (TEXT_OUT,), lambda c: TextEncoderGraph(c.text_encoder)),
            Slot("kv_projector", KV_PROJECTOR, (TEXT_OUT,), (PACKED_KV,), lambda c: KVProjector(c.unet)),
            Slot("unet", DENOISER, *DENOISER_IO, lambda c: CachedKVUNet(c.unet)),
            Slot("unet_int8", DENOISER, *DENOISER_IO, lambda c: CachedKVUNet(c.unet), precision="int8", quantized_from="unet", recipe="unet_int8"),
            Slot("unet_fp8", DENOISER, *DENOISER_IO, lambda c: CachedKVUNet(c.unet), precision="fp8", quantized_from="unet", recipe="unet_fp8"),
            # fed the K/V of the teacher's kv_projector (its own to_k/to_v are the teacher's, untouched by distillation)
            Slot("unet_distilled", DENOISER, *DENOISER_IO, lambda c: CachedKVUNet(c.unet_distilled), component="unet_distilled"),
            Slot("vae_decoder", VAE_DECODER, *DECODER_IO, lambda c: Uint8Frames(VaeDecoderGraph(c.vae))),
        )

    def training_variant(self) -> dict[str, Any]:
        return {"scheduler_config": TRAINED_SCHEDULER_CONFIG}

    def trainer(self, components: Any, device: torch.device) -> Any:
        from .unet3d_train import UNet3DTrainer

        return UNet3DTrainer(components, device)

    def encode_clips(self, components: Any, clips: torch.Tensor) -> torch.Tensor:
        return clip_latents(components.vae, clips)

    def load_tokenizer(self, directory: Path) -> Any:
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(directory))

    def load_component(self, model_dir: Path, name: str, dtype: torch.dtype | None) -> Any:
        from diffusers import AutoencoderKL, UNet3DConditionModel
        from transformers import CLIPTextModel

        path = str(Path(model_dir) / name)
        if name == "tokenizer":
            return self.load_tokenizer(Path(path))
        if name == "scheduler_config":
            return read_scheduler_config(model_dir)
        classes = {"text_encoder": CLIPTextModel, "unet": UNet3DConditionModel, "unet_distilled": UNet3DConditionModel, "vae": AutoencoderKL}
        return load_model(classes[name], Path(path), dtype)

    def geometry(self, components: Any, preset: str) -> ModelGeometry:
        unet, vae, text = components.unet, components.vae, components.text_encoder
        return ModelGeometry(
            family=self.name,
            preset=preset,
            latent_channels=int(unet.config.in_channels),
            vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1),
            denoiser_downsample_factor=2 ** (len(unet.config.block_out_channels) - 1),
            vae_scaling_factor=float(vae.config.scaling_factor),
            text_max_length=int(components.tokenizer.model_max_length),
            text_hidden_size=int(text.config.hidden_size),
            vocab_size=len(components.tokenizer),
            kv_layout=kv_layout(unet),
            default_precision=self.default_precision,
            samplers=["ddim"],
            scheduler_config=components.scheduler_config,
            **self.model_tracks(components),
        )

    def stock_denoiser(self, pipe: Any) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        def call(sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            return pipe.unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]

        return call

    def full_size_denoiser(self, preset: str, dtype: torch.dtype, device: str) -> tuple[Callable[..., torch.Tensor], tuple[int, ...], tuple[int, ...]]:
        from types import SimpleNamespace

        from diffusers import UNet3DConditionModel

        torch.manual_seed(0)
        with torch.device(device):
            unet = UNet3DConditionModel(**MODELSCOPE_UNET).to(dtype).eval()
        size, down = PRESETS[preset], 2 ** (len(MODELSCOPE_VAE["block_out_channels"]) - 1)
        sample = (MODELSCOPE_UNET["in_channels"], size.num_frames, size.height // down, size.width // down)
        return self.stock_denoiser(SimpleNamespace(unet=unet)), sample, (MODELSCOPE_TEXT["max_position_embeddings"], MODELSCOPE_UNET["cross_attention_dim"])

    def save_denoiser(self, module: nn.Module, directory: Path) -> None:
        if not isinstance(module, CachedKVUNet):
            raise TypeError(f"expected a CachedKVUNet, got {type(module).__name__}")
        copy.deepcopy(module.unet).float().cpu().save_pretrained(str(directory))

    def build_tiny_model(self, out_dir: Path, seed: int = 0, **variant: Any) -> Path:
        """Create the tiny random model and save it in diffusers format (``TextToVideoSDPipeline`` layout).

        ``variant``: ``scheduler_config`` (default ModelScope's ``SCHEDULER_CONFIG``).
        """
        from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel
    
        from ..tiny_tokenizer import save_tiny_tokenizer
    
        out_dir = Path(out_dir)
        tokenizer = save_tiny_tokenizer(out_dir / "tokenizer", TINY_TEXT_CONFIG["max_position_embeddings"])
        torch.manual_seed(seed)
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **TINY_TEXT_CONFIG,
        )
        pipe = TextToVideoSDPipeline(
            vae=AutoencoderKL(**TINY_VAE_CONFIG),
            text_encoder=CLIPTextModel(text_config),
            tokenizer=tokenizer,
            unet=UNet3DConditionModel(**TINY_UNET_CONFIG),
            scheduler=DDIMScheduler(**variant.get("scheduler_config", SCHEDULER_CONFIG)),
        )
        pipe.save_pretrained(str(out_dir))
        return out_dir


    def build_full_size_model(self, out_dir: Path, preset: str, dtype: torch.dtype, device: str, **variant: Any) -> Path:
        """ModelScope text-to-video-ms dimensions (1.41B-parameter UNet3D, SD VAE, OpenCLIP-H-sized text encoder)
        with random weights, saved in diffusers format: speed does not depend on the weights' values."""
        from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from ..tiny_tokenizer import save_tiny_tokenizer

        tokenizer = save_tiny_tokenizer(Path(out_dir) / "tokenizer", MODELSCOPE_TEXT["max_position_embeddings"])
        torch.manual_seed(0)
        with torch.device(device):
            text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **MODELSCOPE_TEXT))
            pipe = TextToVideoSDPipeline(vae=AutoencoderKL(**MODELSCOPE_VAE), text_encoder=text, tokenizer=tokenizer,
                                         unet=UNet3DConditionModel(**MODELSCOPE_UNET), scheduler=DDIMScheduler(**SCHEDULER_CONFIG))
        pipe.to(dtype=dtype).save_pretrained(str(out_dir))
        return Path(out_dir)

FAMILY = UNet3DFamily()

"""Model family "unet3d": ModelScope text-to-video-ms / ZeroScope (CLIP text encoder, UNet3D, AutoencoderKL).

Everything family-specific lives here: the tiny demo configuration, loading a diffusers-format
directory, the packed cross-attention K/V (projector and the UNet that consumes it) and the graphs
exported to ONNX. The scheduler, the repository and the client only see ``ModelGeometry``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import KV, FRAMES, INPUT_IDS, LATENTS, NOISE_PRED, SAMPLE, TEXT_EMBEDS, TIMESTEP, KVLayout, ModelGeometry
from .base import EngineGraph

FAMILY = "unet3d"

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


@dataclass
class Components:
    """The loaded torch modules of one unet3d model."""

    tokenizer: Any
    text_encoder: nn.Module
    unet: nn.Module
    vae: nn.Module
    scheduler_config: dict[str, Any]


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Create the tiny random model and save it in diffusers format (``TextToVideoSDPipeline`` layout)."""
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
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
    )
    pipe.save_pretrained(str(out_dir))
    return out_dir


def load_components(model_dir: Path, dtype: torch.dtype = torch.float32) -> Components:
    """Load each component of a local diffusers-format directory with ``from_pretrained``."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model_dir = Path(model_dir)
    for sub in ("tokenizer", "text_encoder", "unet", "vae", "scheduler"):
        if not (model_dir / sub).is_dir():
            raise FileNotFoundError(f"{model_dir} is not a diffusers text-to-video directory: no {sub}/")
    scheduler_config = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    return Components(
        tokenizer=CLIPTokenizer.from_pretrained(str(model_dir / "tokenizer")),
        text_encoder=CLIPTextModel.from_pretrained(str(model_dir / "text_encoder"), torch_dtype=dtype).eval(),
        unet=UNet3DConditionModel.from_pretrained(str(model_dir / "unet"), torch_dtype=dtype).eval(),
        vae=AutoencoderKL.from_pretrained(str(model_dir / "vae"), torch_dtype=dtype).eval(),
        scheduler_config={k: v for k, v in scheduler_config.items() if not k.startswith("_")},
    )


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


class VaeDecoderGraph(nn.Module):
    """Latents [N, C, h, w] (frames as batch) -> frames [N, 3, H, W] in about [-1, 1]."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scaling_factor, return_dict=False)[0]


def load_slot_module(model_dir: Path, slot: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The torch module of one engine slot, loaded from a diffusers directory (the torch runner)."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel

    model_dir = Path(model_dir)
    if slot == "text_encoder":
        module: nn.Module = TextEncoderGraph(CLIPTextModel.from_pretrained(str(model_dir / "text_encoder"), torch_dtype=dtype))
    elif slot in ("kv_projector", "unet", "unet_int8"):
        unet = UNet3DConditionModel.from_pretrained(str(model_dir / "unet"), torch_dtype=dtype)
        module = KVProjector(unet) if slot == "kv_projector" else CachedKVUNet(unet)
    elif slot == "vae_decoder":
        module = VaeDecoderGraph(AutoencoderKL.from_pretrained(str(model_dir / "vae"), torch_dtype=dtype))
    else:
        raise ValueError(f"unknown engine slot {slot!r}")
    return module.to(device).eval()


# --------------------------------------------------------------------------------------------------
# Geometry and exported graphs
# --------------------------------------------------------------------------------------------------
def geometry(components: Components, preset: str) -> ModelGeometry:
    unet, vae, text = components.unet, components.vae, components.text_encoder
    return ModelGeometry(
        family=FAMILY,
        preset=preset,
        latent_channels=int(unet.config.in_channels),
        vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1),
        unet_downsample_factor=2 ** (len(unet.config.block_out_channels) - 1),
        vae_scaling_factor=float(vae.config.scaling_factor),
        text_max_length=int(components.tokenizer.model_max_length),
        text_hidden_size=int(text.config.hidden_size),
        kv_layout=kv_layout(unet),
        scheduler_config=components.scheduler_config,
    )


def engine_graphs(components: Components, geo: ModelGeometry) -> list[EngineGraph]:
    """The four engine-slot graphs with example inputs at the preset's default size."""
    preset = geo.presets
    _, channels, frames, h, w = geo.latent_shape(preset.height, preset.width, min(preset.num_frames, 4), batch=2)
    seq, width = geo.text_max_length, geo.kv_layout.width
    return [
        EngineGraph(
            "text_encoder",
            TextEncoderGraph(components.text_encoder),
            {INPUT_IDS: torch.randint(0, len(components.tokenizer), (2, seq))},
            [TEXT_EMBEDS],
            {INPUT_IDS: {0: "batch"}, TEXT_EMBEDS: {0: "batch"}},
        ),
        EngineGraph(
            "kv_projector",
            KVProjector(components.unet),
            {TEXT_EMBEDS: torch.randn(2, seq, geo.text_hidden_size)},
            [KV],
            {TEXT_EMBEDS: {0: "batch"}, KV: {0: "batch"}},
        ),
        EngineGraph(
            "unet",
            CachedKVUNet(components.unet),
            {
                SAMPLE: torch.randn(2, channels, frames, h, w),
                TIMESTEP: torch.tensor([981.0, 981.0]),
                KV: torch.randn(2, seq, width),
            },
            [NOISE_PRED],
            {
                SAMPLE: {0: "batch", 2: "frames", 3: "latent_height", 4: "latent_width"},
                TIMESTEP: {0: "batch"},
                KV: {0: "batch"},
                NOISE_PRED: {0: "batch", 2: "frames", 3: "latent_height", 4: "latent_width"},
            },
        ),
        EngineGraph(
            "vae_decoder",
            VaeDecoderGraph(components.vae),
            {LATENTS: torch.randn(frames, channels, h, w)},
            [FRAMES],
            {LATENTS: {0: "frames", 2: "latent_height", 3: "latent_width"}, FRAMES: {0: "frames", 2: "height", 3: "width"}},
        ),
    ]

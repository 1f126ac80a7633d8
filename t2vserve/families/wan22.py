"""Model family "wan22": Wan2.2 TI2V-5B and T2V-A14B (UMT5 text encoder, WanTransformer3DModel, AutoencoderKLWan).

The slot declarations: the UMT5 text encoder (padding zeroed as ``WanPipeline`` does), the K/V
projector (text embedder + every block's cross-attention K (RMS-normed) and V, once per request),
one cached-K/V transformer entry per expert (A14B: ``transformer`` above the boundary timestep,
``transformer_2`` below it) and the causal VAE decoder. The torch modules are in ``wan22_modules``,
the tiny demo model in ``wan22_tiny``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..spec import DENOISER, KV_PROJECTOR, TEXT_ENCODER, VAE_DECODER
from ..geometry import ModelGeometry
from . import wan22_modules as modules
from .wan22_tiny import SCHEDULER_CONFIG, TEXT_MAX_LENGTH
from .base import DECODER_IO, DENOISER_IO, PACKED_KV, TEXT_IDS, TEXT_OUT, Family, Slot, Uint8Frames, load_model, read_scheduler_config

#: Entry of each expert (A14B: the high-noise expert first).
EXPERT_ENTRIES = ("transformer", "transformer_2")
#: PRECISION track -> (entry suffix, slot precision, recipe) of each expert's twin; "bf16" is the expert itself.
#: Quantized twins export with TorchScript (ModelOpt's quantizers become Q/DQ through its symbolics);
#: their non-quantized layers run BF16 in INT8 engines (the DiT was trained in BF16; FP16 can overflow).
QUANTIZED_TWINS = {"fp8": ("_fp8", "fp8", "transformer_fp8"), "int8": ("_int8", "int8+bf16", "transformer_int8")}


#: Full-size configurations (benchmarks with random weights: speed does not depend on their values).
TI2V_5B_TRANSFORMER: dict[str, Any] = {
    "patch_size": (1, 2, 2), "num_attention_heads": 24, "attention_head_dim": 128, "in_channels": 48, "out_channels": 48,
    "text_dim": 4096, "freq_dim": 256, "ffn_dim": 14336, "num_layers": 30, "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024,
}
A14B_TRANSFORMER: dict[str, Any] = {**TI2V_5B_TRANSFORMER, "num_attention_heads": 40, "in_channels": 16, "out_channels": 16,
                                    "ffn_dim": 13824, "num_layers": 40}
TI2V_5B_VAE: dict[str, Any] = {
    "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
    "attn_scales": [], "temperal_downsample": [False, True, True], "is_residual": True, "in_channels": 12,
    "out_channels": 12, "patch_size": 2, "scale_factor_temporal": 4, "scale_factor_spatial": 16,
}
UMT5_XXL: dict[str, Any] = {
    "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 256384,
    "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
}


def _vae_decoder(components: Any, geometry: ModelGeometry | None) -> torch.nn.Module:
    """The VAE decoder, uint8 frames out; for ONNX, padded to the preset's most latent frames (the causal VAE makes that exact)."""
    if geometry is None:
        return Uint8Frames(modules.VaeDecoderGraph(components.vae))
    _, high = geometry.frames_range().grid_values()
    return Uint8Frames(modules.VaeDecoderGraph(components.vae, max_latent_frames=geometry.latent_frames(high)))


class Wan22Family(Family):
    name = "wan22"
    component_names = ("tokenizer", "text_encoder", "transformer", "vae", "scheduler")
    default_precision = "bf16"
    full_size_preset = "wan22-480p"
    tiny_preset = "wan22-tiny"
    reference_dtype = torch.bfloat16

    def tracks(self, experts: int = 1) -> dict[str, list[str]]:
        entries = list(EXPERT_ENTRIES[:experts])
        return {"bf16": entries, **{track: [e + suffix for e in entries] for track, (suffix, _, _) in QUANTIZED_TWINS.items()}}

    def slots(self, experts: int = 1) -> tuple[Slot, ...]:
        if experts not in (1, 2):
            raise ValueError(f"wan22 models have 1 or 2 transformer experts, not {experts}")
        bf16: dict[str, Any] = {"precision": "bf16", "exporter": "dynamo"}  # trained in BF16; FP16 can overflow
        experts_slots = []
        for index, entry in enumerate(EXPERT_ENTRIES[:experts]):
            module, export = _expert_module(entry, index), _expert_export(entry, index)
            experts_slots.append(Slot(entry, DENOISER, *DENOISER_IO, module, export_module=export, **bf16))
            for suffix, precision, recipe in QUANTIZED_TWINS.values():
                experts_slots.append(Slot(entry + suffix, DENOISER, *DENOISER_IO, module, precision=precision, quantized_from=entry,
                                          recipe=recipe, export_module=export))
        return (
            # UMT5 overflows in FP16 and its relative-position buckets (Log/Div/Cast) want full precision:
            # FP32 (it runs once per request; the per-step cost is the transformer's)
            Slot("text_encoder", TEXT_ENCODER, (TEXT_IDS,), (TEXT_OUT,), lambda c: modules.TextEncoderGraph(c.text_encoder, c.tokenizer.pad_token_id),
                 precision="fp32", exporter="dynamo"),
            Slot("kv_projector", KV_PROJECTOR, (TEXT_OUT,), (PACKED_KV,), lambda c: modules.KVProjector(*_experts(c, experts)), **bf16),
            *experts_slots,
            Slot("vae_decoder", VAE_DECODER, *DECODER_IO, lambda c: _vae_decoder(c, None), export_module=_vae_decoder, **bf16),
        )

    def load_component(self, model_dir: Path, name: str, dtype: torch.dtype | None) -> Any:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import UMT5EncoderModel

        path = Path(model_dir) / name
        if name == "tokenizer":
            return self.load_tokenizer(path)
        if name == "scheduler_config":
            return read_scheduler_config(model_dir)
        if name == "model_index":
            return json.loads((Path(model_dir) / "model_index.json").read_text())
        classes = {"text_encoder": UMT5EncoderModel, "transformer": WanTransformer3DModel, "transformer_2": WanTransformer3DModel, "vae": AutoencoderKLWan}
        return load_model(classes[name], path, dtype)

    def geometry(self, components: Any, preset: str) -> ModelGeometry:
        index, transformer, vae = components.model_index, components.transformer, components.vae
        experts = 2 if (index.get("transformer_2") or [None])[0] and index.get("boundary_ratio") is not None else 1
        return ModelGeometry(
            family=self.name,
            preset=preset,
            latent_channels=int(transformer.config.in_channels),
            vae_scale_factor=int(vae.config.scale_factor_spatial),
            denoiser_downsample_factor=int(transformer.config.patch_size[1]),
            vae_scaling_factor=1.0,  # Wan normalises latents per channel (latents_mean/std, inside the decoder graph)
            text_max_length=TEXT_MAX_LENGTH,
            text_hidden_size=int(components.text_encoder.config.d_model),
            vocab_size=len(components.tokenizer),
            kv_layout=modules.experts_kv_layout(list(zip(EXPERT_ENTRIES, _experts(components, experts)))),
            tracks=self.tracks(experts),
            default_precision=self.default_precision,
            samplers=["unipc", "euler"],
            vae_temporal_factor=int(vae.config.scale_factor_temporal),
            boundary_ratio=index.get("boundary_ratio") if experts == 2 else None,
            scheduler_config=components.scheduler_config,
        )

    def training_variant(self) -> dict[str, Any]:
        from .wan22_tiny import TRAINED_TRANSFORMER_CONFIG

        return {"transformer": TRAINED_TRANSFORMER_CONFIG}

    def training_recipe(self) -> dict[str, Any]:
        from .wan22_train import TRAINING_RECIPE

        return TRAINING_RECIPE

    def trainer(self, components: Any, device: torch.device) -> Any:
        from .wan22_train import Wan22Trainer

        return Wan22Trainer(components, device)

    def clean_prompt(self, text: str) -> str:
        return modules.clean_prompt(text)

    def encode_clips(self, components: Any, clips: torch.Tensor) -> torch.Tensor:
        vae = components.vae
        shape = (1, -1, 1, 1, 1)
        mean, std = torch.tensor(vae.config.latents_mean).view(shape), torch.tensor(vae.config.latents_std).view(shape)
        return (vae.encode(clips.transpose(1, 2)).latent_dist.mode() - mean) / std

    def build_tiny_model(self, out_dir: Path, seed: int = 0, **variant: Any) -> Path:
        from .wan22_tiny import build_tiny_model

        return build_tiny_model(Path(out_dir), seed=seed, experts=int(variant.get("experts", 1)), transformer=variant.get("transformer"),
                                vae=variant.get("vae"))

    def build_full_size_model(self, out_dir: Path, preset: str, dtype: torch.dtype, device: str, **variant: Any) -> Path:
        """TI2V-5B (experts=1) or the A14B two-expert layout (experts=2) with random weights and a UMT5-XXL encoder.

        ``text_layers``: fewer UMT5-XXL layers (same widths, 4096-wide output), for jobs that never time the
        text encoder (full-size Q/DQ export of the transformer: 2.4 GB on disk instead of 22 GB).
        """
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        from .wan22_tiny import save_tiny_tokenizer

        experts = int(variant.get("experts", 1))
        torch.manual_seed(0)
        tokenizer = save_tiny_tokenizer(Path(out_dir) / "tokenizer")
        with torch.device(device):
            text = {**UMT5_XXL, "num_layers": int(variant.get("text_layers", UMT5_XXL["num_layers"]))}
            parts = {"tokenizer": tokenizer, "text_encoder": UMT5EncoderModel(UMT5Config(**text)).to(dtype)}
            if experts == 2:  # A14B: two 14B experts over the Wan2.1 VAE (z16, 8x8 spatial; diffusers' default config)
                parts |= {"transformer": WanTransformer3DModel(**A14B_TRANSFORMER).to(dtype),
                          "transformer_2": WanTransformer3DModel(**A14B_TRANSFORMER).to(dtype), "vae": AutoencoderKLWan()}
                layout: dict[str, Any] = {"boundary_ratio": 0.875}
            else:
                vae = {**TI2V_5B_VAE, "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48}
                parts |= {"transformer": WanTransformer3DModel(**TI2V_5B_TRANSFORMER).to(dtype), "vae": AutoencoderKLWan(**vae)}
                layout = {"expand_timesteps": True}
            pipe = WanPipeline(**parts, scheduler=UniPCMultistepScheduler(**SCHEDULER_CONFIG), **layout)
        pipe.save_pretrained(str(out_dir))
        return Path(out_dir)

    def stock_denoiser(self, pipe: Any) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        def call(sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            if pipe.config.expand_timesteps:  # TI2V-5B: one timestep per token, as WanPipeline passes it
                tokens = sample.shape[2] * (sample.shape[3] // 2) * (sample.shape[4] // 2)
                timestep = timestep[:, None].expand(-1, tokens)
            return pipe.transformer(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]

        return call


def _experts(components: Any, experts: int) -> list[torch.nn.Module]:
    return [getattr(components, entry) for entry in EXPERT_ENTRIES[:experts]]


def _expert_module(entry: str, index: int) -> Callable[[Any], torch.nn.Module]:
    """Expert ``index``'s cached-K/V transformer: the first reads the head of the packed K/V, the second its tail."""
    return lambda c: modules.CachedKVTransformer(getattr(c, entry), kv_slice="head" if index == 0 else "tail")


def _expert_export(entry: str, index: int) -> Callable[[Any, ModelGeometry], torch.nn.Module]:
    """What ONNX export traces: the expert with its RMS norms, RoPE and self-attention in export form (same output)."""
    from .wan22_export import exportable

    return lambda c, _: exportable(_expert_module(entry, index)(c))


FAMILY = Wan22Family()

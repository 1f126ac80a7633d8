"""Wan2.2 (diffusers ``WanPipeline``) as small exportable modules: the torch side of family "wan22".

* ``TextEncoderGraph``: UMT5 with the prompt mask computed inside, padding zeroed as Wan does.
* ``KVProjector`` / ``CachedKVTransformer``: the text projection and every block's cross-attention
  K/V computed once per request into one packed tensor (``kv_layout``), read by every step.
* ``VaeDecoderGraph``: un-normalise, decode, frames first; optionally padded to a fixed number of
  latent frames so that one static graph serves every shorter video.
"""

from __future__ import annotations

import html
from typing import Any

import regex
import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import KVLayout

try:  # diffusers' prompt_clean runs ftfy when it is installed; so do we.
    import ftfy
except ImportError:  # pragma: no cover - depends on the environment
    ftfy = None  # type: ignore[assignment]


def clean_prompt(text: str) -> str:
    """diffusers' ``prompt_clean`` of ``pipeline_wan``: ftfy (if installed), html unescape twice, whitespace.

    Uses the ``regex`` module like diffusers: its ``\\s`` differs from ``re``'s on a few control characters.
    """
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip()


class TextEncoderGraph(nn.Module):
    """input_ids [B, S] (int64) -> prompt embeddings [B, S, D], zero after each prompt's tokens.

    The attention mask is ``input_ids != pad_token_id`` (the tokenizer pads on the right, so it is a
    prefix); multiplying by it equals ``WanPipeline._get_t5_prompt_embeds``' truncate-and-zero-pad.
    """

    def __init__(self, text_encoder: nn.Module, pad_token_id: int) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.pad_token_id = int(pad_token_id)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids.ne(self.pad_token_id).long()
        hidden = self.text_encoder(input_ids, attention_mask=mask, return_dict=False)[0]
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)


# --------------------------------------------------------------------------------------------------
# Packed cross-attention K/V
# --------------------------------------------------------------------------------------------------
def cross_attention_modules(transformer: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every block's ``attn2`` (text cross-attention), in block order; I2V image K/V is not supported."""
    attns = [(f"blocks.{i}.attn2", block.attn2) for i, block in enumerate(transformer.blocks)]
    for name, attn in attns:
        if attn.add_k_proj is not None:
            raise NotImplementedError(f"{name}: image-conditioned cross-attention (I2V add_k_proj) is not supported")
    return attns


def kv_layout(transformer: nn.Module) -> KVLayout:
    """Packed layout: per block, K (``norm_k(to_k(ctx))``) then V (``to_v(ctx)``), heads x head_dim each."""
    attns = cross_attention_modules(transformer)
    return KVLayout.from_layers([(name, attn.heads, attn.to_k.out_features // attn.heads) for name, attn in attns])


def experts_kv_layout(experts: list[tuple[str, nn.Module]]) -> KVLayout:
    """Packed layout of several experts (A14B): each expert's layers in turn, named ``<entry>.blocks.i.attn2``.

    Every expert has its own text embedder and K/V projections, so each reads its own K/V; the last
    expert's occupy the tail of the tensor (``CachedKVTransformer(kv_slice="tail")``).
    """
    if len(experts) == 1:
        return kv_layout(experts[0][1])
    layers = []
    for entry, transformer in experts:
        layers += [(f"{entry}.{name}", attn.heads, attn.to_k.out_features // attn.heads) for name, attn in cross_attention_modules(transformer)]
    return KVLayout.from_layers(layers)


class KVProjector(nn.Module):
    """Text embeddings [B, S, text_dim] -> packed K/V [B, S, kv_width] of every block's cross-attention.

    The condition embedder's ``text_embedder`` runs once here, not at every denoising step. With
    several transformers (the A14B experts) their packs are concatenated in order.
    """

    def __init__(self, *transformers: nn.Module) -> None:
        super().__init__()
        self.text_embedders = nn.ModuleList(t.condition_embedder.text_embedder for t in transformers)
        attns = [[attn for _, attn in cross_attention_modules(t)] for t in transformers]
        self.to_k = nn.ModuleList(nn.ModuleList(a.to_k for a in expert) for expert in attns)
        self.norm_k = nn.ModuleList(nn.ModuleList(a.norm_k for a in expert) for expert in attns)
        self.to_v = nn.ModuleList(nn.ModuleList(a.to_v for a in expert) for expert in attns)

    def forward(self, text_embeds: torch.Tensor) -> torch.Tensor:
        parts = []
        for text_embedder, to_ks, norm_ks, to_vs in zip(self.text_embedders, self.to_k, self.norm_k, self.to_v):
            context = text_embedder(text_embeds)
            for to_k, norm_k, to_v in zip(to_ks, norm_ks, to_vs):
                parts += [norm_k(to_k(context)), to_v(context)]
        return torch.cat(parts, dim=-1)


class _KVHolder:
    """The packed K/V of the forward pass in progress; None means "project from the text as usual"."""

    kv: torch.Tensor | None = None


class CachedKVAttnProcessor:
    """Wan cross-attention reading K and V (already normalised) from the packed tensor."""

    def __init__(self, holder: _KVHolder, offset: int, inner_dim: int, fallback: Any) -> None:
        self.holder, self.offset, self.inner_dim, self.fallback = holder, offset, inner_dim, fallback

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: Any = None,
    ) -> torch.Tensor:
        kv = self.holder.kv
        if kv is None:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if attention_mask is not None or rotary_emb is not None:
            raise NotImplementedError("cached K/V: Wan's text cross-attention has no mask and no rotary embedding")
        start, inner = self.offset, self.inner_dim
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        key = kv[..., start : start + inner].unflatten(2, (attn.heads, -1)).transpose(1, 2)
        value = kv[..., start + inner : start + 2 * inner].unflatten(2, (attn.heads, -1)).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value).transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def _install_cached_kv(transformer: nn.Module, layout: KVLayout) -> _KVHolder:
    """Install the cached-K/V processors once per transformer; every wrapper of it shares one holder."""
    holder = getattr(transformer, "_t2v_kv_holder", None)
    if holder is None:
        holder = _KVHolder()
        for (_, attn), layer in zip(cross_attention_modules(transformer), layout.layers):
            attn.set_processor(CachedKVAttnProcessor(holder, layer.offset, layer.inner_dim, attn.processor))
        transformer._t2v_kv_holder = holder
    return holder


class CachedKVTransformer(nn.Module):
    """The Wan transformer fed packed K/V: (sample [B, C, F, h, w], timestep [B], kv) -> flow prediction.

    The forward is ``WanTransformer3DModel.forward`` without the text embedder (``KVProjector`` ran
    it once per request) and always on the scalar-timestep path. Wan2.2 TI2V-5B pipelines
    (``expand_timesteps``) pass a timestep per token, [B, seq_len], all equal for text-to-video; the
    scalar path gives the same output while sparing the per-token time embedding: a
    [B, seq_len, 6, dim] fp32 tensor that every block reads (TI2V-5B, 704x1280, 121 frames:
    27,280 tokens x 6 x 3072 x 4 bytes = 2 GB per sample) instead of [B, 6, dim].
    Calling the wrapped transformer directly still runs the stock computation (processor fallback).
    """

    def __init__(self, transformer: nn.Module, kv_slice: str = "head") -> None:
        super().__init__()
        if kv_slice not in ("head", "tail"):
            raise ValueError(f"kv_slice must be head or tail, not {kv_slice!r}")
        self.transformer, self.kv_slice = transformer, kv_slice
        self.layout = kv_layout(transformer)
        self.holder = _install_cached_kv(transformer, self.layout)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        t, width = self.transformer, self.layout.width
        # this expert's K/V: the packed tensor's head (first or only expert) or tail (the second A14B expert)
        kv = kv[..., :width] if self.kv_slice == "head" else kv[..., kv.shape[-1] - width :]
        batch, _, frames, height, width = sample.shape
        p_t, p_h, p_w = t.config.patch_size
        rotary_emb = t.rope(sample)
        hidden = t.patch_embedding(sample).flatten(2).transpose(1, 2).contiguous()

        embedder = t.condition_embedder
        time_embedder_dtype = next(iter(embedder.time_embedder.parameters())).dtype
        temb = embedder.time_embedder(embedder.timesteps_proj(timestep).to(time_embedder_dtype)).type_as(hidden)
        timestep_proj = embedder.time_proj(embedder.act_fn(temb)).unflatten(1, (6, -1))

        self.holder.kv = kv
        try:
            for block in t.blocks:  # attn2 reads the holder; its encoder_hidden_states is unused
                hidden = block(hidden, kv, timestep_proj, rotary_emb)
        finally:
            self.holder.kv = None

        shift, scale = (t.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = (t.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        hidden = t.proj_out(hidden)
        hidden = hidden.reshape(batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
        return hidden.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)


# --------------------------------------------------------------------------------------------------
# VAE decoder
# --------------------------------------------------------------------------------------------------
def _nearest_upsampling(vae: nn.Module) -> nn.Module:
    """Switch the VAE's 2x "nearest-exact" upsampling to "nearest", in place: for integer factors
    both pick source pixel i // 2, so outputs are bit-identical. "nearest" exports as one ONNX Resize;
    "nearest-exact" becomes float index arithmetic and a GatherND, which TensorRT may run in FP16,
    where i + 0.5 is inexact past 1024."""
    for module in vae.modules():
        if isinstance(module, nn.Upsample) and module.mode == "nearest-exact":
            factors = module.scale_factor if isinstance(module.scale_factor, tuple) else (module.scale_factor,)
            if all(float(f).is_integer() for f in factors if f is not None):
                module.mode = "nearest"
    return vae


class VaeDecoderGraph(nn.Module):
    """Normalised latents [1, z, f, h, w] -> frames [F, 3, H, W] in [-1, 1], F = 1 + t (f - 1)
    (t = ``vae.config.scale_factor_temporal``).

    Un-normalises with the VAE's ``latents_mean``/``latents_std`` exactly as ``WanPipeline`` does.
    diffusers decodes one latent frame at a time with a causal feature cache (a Python loop over f).
    With ``max_latent_frames`` N the graph pads the latents to N frames (repeating the last one),
    decodes those and keeps the frames of the real input: the VAE is causal in time, so the result
    equals decoding the f frames alone, and one static loop serves every f <= N (ONNX, TensorRT).
    f > N raises here; an exported graph has no such check (its TensorRT profile bounds f by N).
    """

    def __init__(self, vae: nn.Module, max_latent_frames: int | None = None) -> None:
        super().__init__()
        self.vae = _nearest_upsampling(vae)
        self.max_latent_frames = max_latent_frames
        self.temporal_factor = int(vae.config.scale_factor_temporal)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        self.register_buffer("latents_mean", torch.tensor(vae.config.latents_mean).view(shape), persistent=False)
        self.register_buffer("latents_std", torch.tensor(vae.config.latents_std).view(shape), persistent=False)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        frames = latents.shape[2]
        if self.max_latent_frames is not None:  # frames 0..f-1, then the last one again up to N
            if frames > self.max_latent_frames:
                raise ValueError(f"{frames} latent frames; this graph decodes at most {self.max_latent_frames}")
            index = torch.arange(self.max_latent_frames, device=latents.device).clamp(max=frames - 1)
            latents = latents.index_select(2, index)
        # The pipeline's arithmetic, in the latents' dtype: latents / (1 / std) + mean.
        latents = latents / (1.0 / self.latents_std.to(latents.dtype)) + self.latents_mean.to(latents.dtype)
        video = self.vae.decode(latents, return_dict=False)[0]
        return video[0, :, : 1 + self.temporal_factor * (frames - 1)].permute(1, 0, 2, 3)

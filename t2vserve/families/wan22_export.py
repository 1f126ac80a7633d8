"""Export-only forms of three Wan transformer parts, equal in output, that both ONNX exporters can trace.

* ``PlainRMSNorm``: ``torch.nn.RMSNorm`` (the attention's ``norm_q`` / ``norm_k``) in plain ops. The
  TorchScript exporter has no symbolic for ``aten::rms_norm`` below opset 23, and the quantized
  transformer exports with TorchScript: ModelOpt's quantizers become Q/DQ through their TorchScript
  symbolics (``torch.export`` would trace through them into rounding arithmetic instead).
* ``IndexedRotaryPosEmbed``: ``WanRotaryPosEmbed`` with its frequency tables gathered at
  ``arange(patched frames / height / width)`` instead of sliced by those counts. The slice
  ``table[:n]`` has size ``min(n, rows)``, a data-dependent guard that ``torch.export`` of torch 2.11
  refused on the 5B transformer; ``index_select`` has size ``n`` (the same values).

* ``PlainRopeAttnProcessor``: the self-attention with the rotary embedding interleaved by
  ``stack`` instead of in-place strided stores (``out[..., 0::2] = ...``), which the TorchScript
  tracer records with the example's shapes (the graph then fails on any other size).

``exportable(module)`` swaps them in place inside a module, before export.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class PlainRMSNorm(nn.Module):
    """``torch.nn.RMSNorm`` over the last dimension: x / sqrt(mean(x^2) + eps) * weight, computed in fp32."""

    def __init__(self, norm: nn.RMSNorm) -> None:
        super().__init__()
        if len(tuple(norm.normalized_shape)) != 1:
            raise NotImplementedError("only RMS norms over the last dimension")
        self.eps = norm.eps
        self.weight = norm.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps)
        if self.weight is not None:
            h = h * self.weight.float()
        return h.to(x.dtype)


class IndexedRotaryPosEmbed(nn.Module):
    """``WanRotaryPosEmbed.forward`` with ``index_select(arange(n))`` in place of ``[:n]`` (shares its tables)."""

    def __init__(self, rope: nn.Module) -> None:
        super().__init__()
        self.patch_size = tuple(rope.patch_size)
        self.split_sizes = [rope.t_dim, rope.h_dim, rope.w_dim]
        self.register_buffer("freqs_cos", rope.freqs_cos, persistent=False)
        self.register_buffer("freqs_sin", rope.freqs_sin, persistent=False)

    def _grid(self, table: torch.Tensor, counts: tuple[torch.Tensor | int, ...]) -> torch.Tensor:
        f, h, w = counts
        parts = table.split(self.split_sizes, dim=1)
        device = table.device
        pick = [part.index_select(0, torch.arange(n, device=device)) for part, n in zip(parts, counts)]
        grid = [
            pick[0].view(f, 1, 1, -1).expand(f, h, w, -1),
            pick[1].view(1, h, 1, -1).expand(f, h, w, -1),
            pick[2].view(1, 1, w, -1).expand(f, h, w, -1),
        ]
        return torch.cat(grid, dim=-1).reshape(1, f * h * w, 1, -1)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.patch_size
        counts = (frames // p_t, height // p_h, width // p_w)
        return self._grid(self.freqs_cos, counts), self._grid(self.freqs_sin, counts)


def rotate(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's ``apply_rotary_emb`` on interleaved pairs, without in-place stores (same values)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


class PlainRopeAttnProcessor:
    """``WanAttnProcessor`` for text-to-video (no image K/V) with ``rotate`` as its rotary embedding."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb: Any = None) -> torch.Tensor:
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if attn.add_k_proj is not None:
            raise NotImplementedError("image-conditioned attention (I2V add_k_proj) has no export processor")
        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = rotate(query, *rotary_emb), rotate(key, *rotary_emb)
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attention_mask)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def exportable(module: nn.Module) -> nn.Module:
    """``module`` with every RMSNorm, Wan RoPE and Wan self-attention processor inside it in export form (in place)."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor, WanRotaryPosEmbed

    for child in module.modules():
        if getattr(child, "processor", None).__class__ is WanAttnProcessor:
            child.set_processor(PlainRopeAttnProcessor())

    for name, child in list(module.named_modules()):
        replacement: nn.Module | None = None
        if isinstance(child, nn.RMSNorm):
            replacement = PlainRMSNorm(child)
        elif isinstance(child, WanRotaryPosEmbed):
            replacement = IndexedRotaryPosEmbed(child)
        if replacement is not None:
            parent, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, attr, replacement)
    return module

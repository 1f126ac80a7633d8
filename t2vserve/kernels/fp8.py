"""FP8 (E4M3) linear layers for the torch runner: real FP8 GEMMs through ``torch._scaled_mm``.

Weights are quantized once, per output channel; activations per row (per token) at every call, the
scheme of TensorRT-LLM's and lightx2v's FP8 linears. On Hopper (compute capability 9.0) and Ada (8.9)
``torch._scaled_mm`` runs cuBLASLt FP8 GEMMs; torch 2.13's CPU build runs it too (slowly), which is
what the tests use. Convolutions stay in the compute dtype: torch has no FP8 convolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
#: ``torch._scaled_mm`` needs both GEMM dimensions of the weight to be multiples of 16.
ALIGNMENT = 16


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (E4M3 [M, K], fp32 scale [M, 1]) with x ~= q * scale, one scale per row."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def fp8_supported(device: torch.device) -> bool:
    """FP8 GEMMs exist on the CPU build and on CUDA GPUs of compute capability 8.9 or newer."""
    if device.type == "cpu":
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


class Fp8Linear(nn.Module):
    """``nn.Linear`` with E4M3 weights (per output channel) and E4M3 activations (per row)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = linear.weight.dtype
        weight, scale = quantize_rows(linear.weight.detach())
        # _scaled_mm wants the second operand column-major: keep W^T as a transposed view of W
        self.register_buffer("weight_t", weight.t(), persistent=False)
        self.register_buffer("weight_scale", scale.t().contiguous(), persistent=False)  # [1, N]
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows, scale = quantize_rows(x.reshape(-1, self.in_features))
        out = torch._scaled_mm(rows, self.weight_t, scale_a=scale, scale_b=self.weight_scale, bias=None, out_dtype=self.out_dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)


@dataclass
class Fp8Conversion:
    """What ``convert_to_fp8`` did: module names by outcome."""

    converted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # kept in the compute dtype by the recipe
    unaligned: list[str] = field(default_factory=list)  # dimensions not multiples of ALIGNMENT

    def summary(self) -> str:
        return f"{len(self.converted)} linear layers FP8, {len(self.kept)} kept by the recipe, {len(self.unaligned)} unaligned kept"


def convert_to_fp8(module: nn.Module, keep: Callable[[str], bool] = lambda name: False) -> Fp8Conversion:
    """Swap every ``nn.Linear`` of ``module`` (in place) for an ``Fp8Linear`` unless ``keep(name)``."""
    report = Fp8Conversion()
    for name, child in list(module.named_modules()):
        if not isinstance(child, nn.Linear):
            continue
        if keep(name):
            report.kept.append(name)
        elif child.in_features % ALIGNMENT or child.out_features % ALIGNMENT:
            report.unaligned.append(name)
        else:
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, Fp8Linear(child))
            report.converted.append(name)
    return report

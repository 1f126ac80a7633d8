"""FP8 linear layers of the torch runner (``t2vserve.kernels.fp8``) against torch's float Linear."""

import pytest
import torch
from torch import nn

from t2vserve.kernels.fp8 import FP8_MAX, Fp8Linear, convert_to_fp8, quantize_rows


def test_rows_are_scaled_to_the_e4m3_range() -> None:
    x = torch.randn(6, 32) * torch.logspace(-3, 3, 6)[:, None]
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (6, 1)
    assert torch.allclose(q.float().abs().amax(dim=1), torch.full((6,), FP8_MAX))  # each row uses the whole range
    assert torch.allclose(q.float() * scale, x, rtol=0.07, atol=0)  # E4M3: 3 mantissa bits, error <= 1/16 relative


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_matches_the_float_layer(dtype) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48).to(dtype)
    x = torch.randn(2, 5, 64, dtype=dtype)
    reference = linear(x).float()
    out = Fp8Linear(linear)(x)
    assert out.dtype == dtype and out.shape == (2, 5, 48)
    error = ((out.float() - reference).norm() / reference.norm()).item()
    assert 0 < error < 0.06, error  # quantized (not the float path), within E4M3's precision


def test_conversion_follows_the_keep_rule_and_alignment() -> None:
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32), nn.Linear(32, 10), nn.Conv2d(3, 16, 3))
    report = convert_to_fp8(model, keep=lambda name: name == "2")
    assert report.converted == ["0"] and report.kept == ["2"] and report.unaligned == ["3"]
    assert isinstance(model[0], Fp8Linear) and type(model[2]) is nn.Linear and type(model[3]) is nn.Linear
    assert type(model[4]) is nn.Conv2d  # no FP8 convolution in torch

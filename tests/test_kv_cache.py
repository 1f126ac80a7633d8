"""The UNet fed the packed K/V equals the original UNet fed text embeddings (fp32, 1e-4)."""

import pytest
import torch

from t2vserve.families.unet3d import CachedKVUNet, KVProjector, cross_attention_modules, kv_layout


@pytest.fixture(scope="module")
def unet(components):
    return components.unet


def test_layout_covers_every_cross_attention_layer(unet) -> None:
    layout = kv_layout(unet)
    modules = cross_attention_modules(unet)
    assert [layer.name for layer in layout.layers] == [name for name, _ in modules]
    assert len(modules) >= 3  # down, mid and up blocks each attend to the text
    offset = 0
    for layer, (_, attn) in zip(layout.layers, modules):
        assert layer.offset == offset and layer.inner_dim == attn.to_k.out_features == attn.to_v.out_features
        offset += 2 * layer.inner_dim
    assert layout.width == offset


@pytest.mark.parametrize("batch,frames,size", [(2, 8, 16), (4, 3, 8)])
def test_cached_kv_unet_equals_unet_with_text(unet, batch: int, frames: int, size: int) -> None:
    torch.manual_seed(batch)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim)
    sample = torch.randn(batch, 4, frames, size, size)
    timestep = torch.randint(0, 1000, (batch,)).float()
    cached = CachedKVUNet(unet)
    with torch.no_grad():
        kv = KVProjector(unet)(text)
        assert kv.shape == (batch, 77, cached.layout.width)
        actual = cached(sample, timestep, kv)
        expected = unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_cached_kv_is_what_the_unet_attends_to(unet) -> None:
    """Changing only the K/V changes the output: the cached path does not read the text elsewhere."""
    torch.manual_seed(0)
    sample, timestep = torch.randn(2, 4, 2, 8, 8), torch.tensor([500.0, 500.0])
    cached = CachedKVUNet(unet)
    width = cached.layout.width
    with torch.no_grad():
        a = cached(sample, timestep, torch.randn(2, 77, width))
        b = cached(sample, timestep, torch.randn(2, 77, width))
    assert (a - b).abs().max() > 1e-3


def test_the_benchmarks_stock_denoiser_is_the_unet_fed_text(components) -> None:
    """``bench inprocess`` times diffusers' own denoiser call (``Family.stock_denoiser``) beside the cached-K/V slot:
    both give the same noise prediction."""
    from t2vserve.families import get_family

    torch.manual_seed(0)
    unet = components.unet
    text, sample, timestep = torch.randn(2, 77, unet.config.cross_attention_dim), torch.randn(2, 4, 3, 8, 8), torch.tensor([981.0, 981.0])
    with torch.no_grad():
        stock = get_family("unet3d").stock_denoiser(components)(sample, timestep, text)
        cached = CachedKVUNet(unet)(sample, timestep, KVProjector(unet)(text))
    torch.testing.assert_close(stock, cached, rtol=1e-4, atol=1e-4)

"""The wan22 training adapter on the trained demo model's layout: what the VAE is trained on (its unclamped
decode), the latents the transformer learns (the posterior mode, normalised to unit spread), the text
embeddings (computed over the longest prompt, equal to the served encoder's) and the unconditional caption."""

from __future__ import annotations

import random

import pytest
import torch

from t2vserve.families import get_family
from t2vserve.families.wan22_modules import TextEncoderGraph
from t2vserve.families.wan22_train import decode_unclamped
from t2vserve.spec import PRESETS
from t2vserve.train import world
from t2vserve.train.fit import Tokens
from t2vserve.train.samples import on_background

FAMILY = get_family("wan22")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    directory = FAMILY.build_tiny_model(tmp_path_factory.mktemp("wan-train") / "model", seed=2, **FAMILY.training_variant())
    return FAMILY.trainer(FAMILY.components(directory), torch.device("cpu"))


@pytest.fixture(scope="module")
def clips():
    return world.batch(6, random.Random(4), frames=PRESETS[FAMILY.tiny_preset].num_frames)[0]


def test_training_variant_keeps_the_served_layout(trainer) -> None:
    """Wider than the plumbing model, same layout: the z48 VAE, patch 2, TI2V-5B style (what serving and export read)."""
    transformer, vae = trainer.denoiser.config, trainer.vae.config
    assert (transformer.in_channels, tuple(transformer.patch_size), vae.z_dim, vae.scale_factor_spatial) == (48, (1, 2, 2), 48, 16)
    assert trainer.denoiser.config.num_attention_heads * trainer.denoiser.config.attention_head_dim >= 2 * 2 * 48  # a token emits 192 values


def test_the_vae_trains_on_its_decode_before_the_clamp(trainer) -> None:
    vae = trainer.vae.eval()
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(30)  # a decoder that overshoots [-1, 1], as a trained one does on black and white
        try:
            latents = torch.randn(1, vae.config.z_dim, 3, 4, 4, generator=torch.Generator().manual_seed(0))
            raw, decoded = decode_unclamped(vae, latents), vae.decode(latents).sample
        finally:
            vae.decoder.conv_out.weight.div_(30)
    assert raw.shape == decoded.shape == (1, 3, 9, 64, 64)
    assert torch.equal(raw.clamp(-1, 1), decoded)
    assert (raw.abs() > 1).float().mean() > 0.1  # values the clamped decode would give no gradient


def test_latents_are_the_normalised_posterior_mode(trainer, clips) -> None:
    trainer.fit_latent_scale(clips)
    first, second = trainer.encode(clips), trainer.encode(clips)
    assert torch.equal(first, second)  # the mode: no posterior noise
    # the statistics were fitted on these clips: unit spread per channel (a posterior sample is ~100x that here)
    assert first.std(dim=(0, 2, 3, 4)).sub(1).abs().max() < 0.01
    assert first.mean(dim=(0, 2, 3, 4)).abs().max() < 0.01


def test_text_embeddings_over_the_longest_prompt_equal_the_served_encoder(trainer) -> None:
    captions = ["a red ball slides left on black", "", "the green box getting bigger", PRESETS[FAMILY.tiny_preset].negative_prompt]
    ids = Tokens(trainer.tokenizer, FAMILY.clean_prompt)(captions, torch.device("cpu"))
    served = TextEncoderGraph(trainer.text_encoder, trainer.tokenizer.pad_token_id).eval()
    with torch.no_grad():
        short, full = trainer.text_embeddings(ids), served(ids)
    assert short.shape == full.shape
    assert (short - full).abs().max() < 1e-5  # the same up to the summation order of shorter matmuls
    assert ids.shape[1] == 512 and int(ids.ne(trainer.tokenizer.pad_token_id).sum(dim=1).max()) < 64


def test_one_background_worlds_and_prompts() -> None:
    _, _, attrs = world.batch(12, random.Random(0), frames=5, size=32, backgrounds=["black"])
    assert {a.background for a in attrs} == {"black"}
    first = [world.sample_attributes(random.Random(3)) for _ in range(5)]  # the default draws as before: every background
    assert [world.sample_attributes(random.Random(3), backgrounds=None) for _ in range(5)] == first
    entry = {"prompt": "a red circle moving up on a gray background", "colour": "red"}
    assert on_background(entry, "black") == {"prompt": "a red circle moving up on a black background", "colour": "red"}
    assert on_background(entry, None) is entry

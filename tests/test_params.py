"""Parameter validation, without a server (the server tests send the same cases over the wire)."""

import numpy as np
import pytest

from t2vserve.params import ParameterError, resolve, tokenize_pair
from t2vserve.spec import PRESETS


def test_defaults_come_from_the_preset(geometry) -> None:
    resolved = resolve({"PROMPT": np.array([b"a cat"], dtype=object)}, geometry)
    preset = PRESETS[geometry.preset]
    assert (resolved.height, resolved.width, resolved.num_frames) == (preset.height, preset.width, preset.num_frames)
    assert (resolved.steps, resolved.fps, resolved.guidance_scale) == (preset.steps, preset.fps, preset.guidance_scale)
    assert 0 <= resolved.seed < 2**63 and resolved.negative_prompt == ""


def test_multiple_of_comes_from_the_geometry(geometry) -> None:
    m = geometry.pixel_multiple
    assert m == geometry.vae_scale_factor * geometry.denoiser_downsample_factor
    low = PRESETS[geometry.preset].height_range[0]
    with pytest.raises(ParameterError, match=f"HEIGHT: {low + m // 2} is out of range; allowed .*a multiple of {m}"):
        resolve({"PROMPT": np.array([b"a"], dtype=object), "HEIGHT": np.array([low + m // 2], np.int32)}, geometry)


def test_prompt_over_the_token_limit_is_refused(components, geometry) -> None:
    words = " ".join(["zebra"] * 200)
    with pytest.raises(ParameterError, match="PROMPT: is .* tokens long; allowed at most 75 tokens"):
        tokenize_pair(components.tokenizer, words, "", geometry.text_max_length)
    ids = tokenize_pair(components.tokenizer, "a cat", "blurry", geometry.text_max_length)
    assert ids.shape == (2, geometry.text_max_length) and ids.dtype == np.int64

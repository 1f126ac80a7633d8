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


def test_response_key_only_for_an_explicit_seed_and_from_what_the_latents_depend_on(geometry) -> None:
    """RESPONSE_KEY: empty when the server draws the seed; equal for requests whose latents are equal (FPS,
    TIME_LIMIT_S and RETURN_FRAMES do not change them); different when the prompt, the seed, the steps or the track differ."""

    def key(**inputs) -> str:
        raw = {"PROMPT": np.array([b"a red circle"], dtype=object), **{k: np.array([v]) for k, v in inputs.items()}}
        return resolve(raw, geometry).response_key()

    assert key() == "" and key(STEPS=np.int32(3)) == ""  # the server's seed: a new clip is asked for
    base = key(SEED=np.int64(7))
    assert len(base) == 64 and base == key(SEED=np.int64(7))
    assert base == key(SEED=np.int64(7), FPS=np.int32(4), TIME_LIMIT_S=np.float32(30), RETURN_FRAMES=np.bool_(False))
    others = [key(SEED=np.int64(8)), key(SEED=np.int64(7), STEPS=np.int32(3)), key(SEED=np.int64(7), GUIDANCE_SCALE=np.float32(1.5)),
              key(SEED=np.int64(7), NEGATIVE_PROMPT=np.array([b"blur"], dtype=object))]
    other_track = next((t for t in geometry.tracks if t != geometry.default_precision), None)
    if other_track is not None:
        others.append(key(SEED=np.int64(7), PRECISION=np.array([other_track.encode()], dtype=object)))
    assert base not in others and len(set(others)) == len(others)
    raw = {"PROMPT": np.array([b"a blue square"], dtype=object), "SEED": np.array([np.int64(7)])}
    assert resolve(raw, geometry).response_key() != base


def test_return_frames_defaults_to_true_and_takes_a_bool_only(geometry) -> None:
    prompt = {"PROMPT": np.array([b"a red circle"], dtype=object)}
    assert resolve(prompt, geometry).return_frames is True
    assert resolve({**prompt, "RETURN_FRAMES": np.array([False])}, geometry).resolved()["RETURN_FRAMES"] is False
    with pytest.raises(ParameterError, match="RETURN_FRAMES: 1 is not a BOOL; allowed true or false"):
        resolve({**prompt, "RETURN_FRAMES": np.array([1], dtype=np.int32)}, geometry)

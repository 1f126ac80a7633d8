"""Safety: the prompt filter (normalisation, categories, off switch, served refusal) and the output-check hook."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from t2vserve.client import GenerationRequest
from t2vserve.params import ParameterError
from t2vserve.safety import (
    DATA_DIR,
    ContentRefused,
    PromptFilter,
    blank_clip,
    configured_filter,
    find_filter_file,
    load_output_check,
    normalized_forms,
    run_output_check,
)
from t2vserve.spec import SAFETY_FILTER_FILE

FILTER = PromptFilter.from_dict(
    {"categories": {"weapons": {"terms": ["flamethrower", "war axe"], "patterns": [r"\bak-?47\b"]}, "other": {"terms": ["zorb"]}}}
)


@pytest.mark.parametrize(
    "prompt",
    [
        "a FLAMETHROWER in a field",  # case
        "a flámethrower",  # accents
        "a ｆｌａｍｅｔｈｒｏｗｅｒ",  # full-width
        "a flame\u200bthrower",  # zero-width space
        "a fl4m3thr0wer!!!",  # leetspeak-lite, trailing punctuation
        "an f.l.a.m.e.t.h.r.o.w.e.r",  # punctuation between letters
        "a f l a m e t h r o w e r at dawn",  # spaced out, after a one-letter word
        "a war-axe",  # a two-word term across punctuation
        "the war   axe",  # and across spacing
        "an AK47 rifle",  # pattern over the folded text (digits kept)
    ],
)
def test_trivial_evasions_are_normalised_away(prompt: str) -> None:
    assert FILTER.category_of(prompt) == "weapons", normalized_forms(prompt)


@pytest.mark.parametrize("prompt", ["a thrower of flames", "a warm axolotl", "zorbing down a hill", "a cat at noon"])
def test_terms_match_whole_words_only(prompt: str) -> None:
    assert FILTER.category_of(prompt) is None


def test_refusal_names_prompt_and_category_never_the_text() -> None:
    with pytest.raises(ContentRefused) as info:
        FILTER.check("please draw a zorb")
    assert isinstance(info.value, ParameterError) and info.value.name == "PROMPT"
    assert str(info.value) == "PROMPT: refused by the safety filter (category: other)" and "zorb" not in str(info.value)


def test_shipped_filter_loads_and_passes_ordinary_prompts() -> None:
    shipped = PromptFilter.load(DATA_DIR / SAFETY_FILTER_FILE)
    assert [c.name for c in shipped.categories] == ["graphic_violence", "sexual_content", "self_harm"]
    assert shipped.category_of("G.O.R.E everywhere") == "graphic_violence"
    for prompt in ("a red circle moving to the right", "a gorilla eating a pear", "skillful pottery", "a bloody mary cocktail"):
        assert shipped.category_of(prompt) is None, prompt


def test_filter_file_lookup_and_off_switch(tmp_path) -> None:
    own = tmp_path / SAFETY_FILTER_FILE
    own.write_text(json.dumps({"categories": {"local": {"terms": ["zorb"]}}}))
    assert find_filter_file(SAFETY_FILTER_FILE, tmp_path) == own  # the model's own file first
    assert find_filter_file(SAFETY_FILTER_FILE, tmp_path / "elsewhere") == DATA_DIR / SAFETY_FILTER_FILE
    assert configured_filter(SAFETY_FILTER_FILE, "true", tmp_path).category_of("a zorb") == "local"
    assert configured_filter(SAFETY_FILTER_FILE, " False ", tmp_path) is None
    with pytest.raises(ValueError, match="must be true or false"):
        configured_filter(SAFETY_FILTER_FILE, "off", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        find_filter_file("missing.json", tmp_path)
    with pytest.raises(ValueError, match="'categories'"):
        PromptFilter.from_dict({"terms": ["zorb"]})


def test_output_check_hook() -> None:
    flat = np.full((2, 8, 8, 3), 17, dtype=np.uint8)
    noisy = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    assert blank_clip(flat) == "blank" and blank_clip(noisy) is None
    assert load_output_check("none") is None and load_output_check("blank_clip") is blank_clip
    assert load_output_check("t2vserve.safety:blank_clip") is blank_clip  # any package.module:function
    with pytest.raises(ValueError, match="unknown output check 'nsfw_detector'"):
        load_output_check("nsfw_detector")
    run_output_check(None, flat)
    run_output_check(blank_clip, noisy)
    with pytest.raises(ContentRefused, match=r"^PROMPT: refused by the output check \(category: blank\)$"):
        run_output_check(blank_clip, flat)


def test_served_refusal_is_invalid_arg_with_category_and_the_server_keeps_serving(grpc_client, geometry) -> None:
    with pytest.raises(InferenceServerException) as info:
        grpc_client.generate(GenerationRequest("a cat in a D1smemberment scene", seed=0, steps=1))
    message = info.value.message()
    assert str(info.value.status()) == "StatusCode.INVALID_ARGUMENT", message
    assert "PROMPT: refused by the safety filter (category: graphic_violence)" in message
    assert "smember" not in message.lower()
    # only PROMPT is filtered: naming the content in the negative prompt is what steers away from it
    served = grpc_client.generate(GenerationRequest("a cat", negative_prompt="dismemberment", seed=0, steps=1, num_frames=2))
    assert served.video.shape[0] == 2

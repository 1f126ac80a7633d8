"""The shapes world (procedural clips + captions) and the adherence detector that reads clips of it."""

import random

import numpy as np
import pytest

from t2vserve.quality.adherence import adherence, matches, read_clip
from t2vserve.train import world
from t2vserve.video import decode_mp4, encode_mp4


def _uint8(clip) -> np.ndarray:
    return (clip.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


@pytest.mark.parametrize("frames", [8, 16])
def test_detector_reads_every_generated_combination(frames) -> None:
    attrs = [world.Attributes(c, s, m, b) for c, s, m in world.combinations() for b in world.BACKGROUNDS]
    rows = []
    for seed in (0, 1):
        for a, clip in zip(attrs, world.render(attrs, frames, 64, seed=seed)):
            reading = read_clip(_uint8(clip))
            rows.append(matches(reading, {"colour": a.colour, "shape": a.shape, "motion": a.motion}))
            assert reading.background == a.background
    score = adherence(rows)
    assert score == {"colour": 1.0, "shape": 1.0, "motion": 1.0, "all": 1.0}


def test_detector_survives_the_mp4_round_trip() -> None:
    rng = random.Random(5)
    attrs = [world.sample_attributes(rng) for _ in range(40)]
    rows = []
    for a, clip in zip(attrs, world.render(attrs, 8, 64, seed=3)):
        video, _ = decode_mp4(encode_mp4(_uint8(clip), 8))
        rows.append(matches(read_clip(video), {"colour": a.colour, "shape": a.shape, "motion": a.motion}))
    assert adherence(rows)["all"] >= 0.95


def test_detector_reports_nothing_on_a_blank_clip_and_disagrees_with_wrong_prompts() -> None:
    blank = np.full((8, 64, 64, 3), 110, dtype=np.uint8)
    reading = read_clip(blank)
    assert (reading.colour, reading.shape, reading.motion) == ("none", "none", "none")
    clip = _uint8(world.render([world.Attributes("red", "circle", "left")], 8, 64, seed=0)[0])
    wrong = matches(read_clip(clip), {"colour": "blue", "shape": "circle", "motion": "right"})
    assert wrong == {"colour": False, "shape": True, "motion": False, "all": False}


def test_captions_name_their_attributes_and_held_out_combinations_never_train() -> None:
    rng = random.Random(0)
    seen = set()
    for _ in range(3000):
        a = world.sample_attributes(rng)
        seen.add(a.combination)
        assert world.parse_prompt(world.caption(a, rng)) == {"colour": a.colour, "shape": a.shape, "motion": a.motion}
    assert not seen & world.HELD_OUT
    assert seen == set(world.combinations(held_out=False))
    for c, s, m in world.HELD_OUT:  # every single attribute of a held-out combination is trained
        assert any(x[0] == c for x in seen) and any(x[1] == s for x in seen) and any(x[2] == m for x in seen)


def test_rendering_is_seeded() -> None:
    attrs = [world.Attributes("green", "triangle", "grow", "white")] * 3
    a, b, c = world.render(attrs, 8, 64, seed=1), world.render(attrs, 8, 64, seed=1), world.render(attrs, 8, 64, seed=2)
    assert np.array_equal(a.numpy(), b.numpy()) and not np.array_equal(a.numpy(), c.numpy())

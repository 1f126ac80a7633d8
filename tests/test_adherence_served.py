"""The served trained demo model follows its prompts: the adherence detector over a few seen prompts.

On these 12 clips the shipped model scored colour 83 %, shape 50 %, motion 17 % (docs/quality.json,
the same clips as make quality's first six seen prompts, seeds 7 and 2024). The floors sit below that
and above chance (colour 1/5, shape 1/3): a broken text path, K/V cache or sampler drops colour to
chance and fails this test. Motion is not asserted: this model does not follow motion yet (17 % is
chance, 1/6).
"""

from t2vserve.client import GenerationRequest
from t2vserve.quality.adherence import adherence, matches, read_clip
from t2vserve.quality.report import load_quality_set

#: Per attribute: the least share of clips that must show what the prompt asks for.
FLOORS = {"colour": 0.6, "shape": 0.4}
SEEDS = (7, 2024)


def test_served_clips_follow_seen_prompts(grpc_client) -> None:
    prompts = [p for p in load_quality_set()["prompts"] if not p["held_out"]][:6]
    rows = []
    for entry in prompts:
        for seed in SEEDS:
            video = grpc_client.generate(GenerationRequest(entry["prompt"], seed=seed, precision="fp16")).video
            rows.append(matches(read_clip(video), entry))
    score = adherence(rows)
    assert all(score[k] >= floor for k, floor in FLOORS.items()), score

"""Quality tiers (request PRESET draft / standard / final): concrete for every model preset, overridable, served."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from t2vserve.client import GenerationRequest
from t2vserve.demo import stage_times
from t2vserve.families import get_family
from t2vserve.params import ParameterError, resolve
from t2vserve.settings import REPO_ROOT
from t2vserve.spec import DISTILLED_TRACK, DRAFT_STEP_CACHE, PRESETS, QUALITY_TIERS, QUANTIZED_TRACKS
from t2vserve.geometry import KVLayout, ModelGeometry

#: Pixel multiples (VAE scale x denoiser downsampling) each family's models have, and its VAE's temporal factor.
FAMILY_GRIDS = {"unet3d": ((8, 64), 1), "wan22": ((16, 32), 4)}


def _geometry(preset: str, multiple: int) -> ModelGeometry:
    family = get_family(PRESETS[preset].family)
    temporal = FAMILY_GRIDS[family.name][1]
    return ModelGeometry(family.name, preset, 4, multiple, 1, 1.0, 77, 32, 100, KVLayout(()), family.tracks(),
                         family.default_precision, ["ddim"], vae_temporal_factor=temporal)


GEOMETRIES = [(preset, m) for preset, p in PRESETS.items() for m in FAMILY_GRIDS[p.family][0]]


@pytest.mark.parametrize("preset,multiple", GEOMETRIES)
def test_every_tier_is_concrete_and_inside_the_model_ranges(preset: str, multiple: int) -> None:
    geometry, model = _geometry(preset, multiple), PRESETS[preset]
    ranges = geometry.ranges()
    tiers = {name: geometry.defaults(name) for name in QUALITY_TIERS}
    for name, values in tiers.items():
        for parameter in ("STEPS", "HEIGHT", "WIDTH", "NUM_FRAMES", "FPS"):
            assert ranges[parameter].contains(values[parameter]), (name, parameter, values[parameter])
        assert values["PRECISION"] in geometry.tracks
    standard, draft, final = tiers["standard"], tiers["draft"], tiers["final"]
    assert (standard["HEIGHT"], standard["WIDTH"], standard["NUM_FRAMES"], standard["STEPS"]) == (
        model.height, model.width, model.num_frames, model.steps)
    assert standard["PRECISION"] == geometry.default_precision
    assert draft["STEPS"] < standard["STEPS"] < final["STEPS"]
    assert draft["HEIGHT"] * draft["WIDTH"] <= standard["HEIGHT"] * standard["WIDTH"] == final["HEIGHT"] * final["WIDTH"]
    # the draft keeps the aspect ratio within one grid step
    assert abs(draft["WIDTH"] / draft["HEIGHT"] - model.width / model.height) <= multiple / draft["HEIGHT"]


def test_large_models_draft_at_360p_class() -> None:
    assert _geometry("wan22-720p", 32).defaults("draft")["HEIGHT"] == 352
    assert _geometry("wan22-480p", 32).defaults("draft")["HEIGHT"] == 256  # the model's smallest height


#: The pixel multiple of each model preset's shipped or reference model (README: Parameters).
README_MULTIPLES = {"tiny": 8, "modelscope": 64, "wan22-tiny": 32, "wan22-480p": 32, "wan22-720p": 32}


def test_readme_tier_table_states_what_spec_computes() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for preset, multiple in README_MULTIPLES.items():
        values = [_geometry(preset, multiple).defaults(tier) for tier in QUALITY_TIERS]
        cells = [f"{v['HEIGHT']}x{v['WIDTH']}, {v['NUM_FRAMES']} frames, {v['STEPS']} steps, {v['PRECISION']}" for v in values]
        assert f"| `{preset}` | " + " | ".join(cells) + " |" in readme, preset
    assert set(README_MULTIPLES) == set(PRESETS)


def test_draft_runs_the_quantized_track_final_the_full_one() -> None:
    unet3d, wan22 = _geometry("modelscope", 64), _geometry("wan22-480p", 32)
    assert [unet3d.defaults(t)["PRECISION"] for t in ("draft", "standard", "final")] == ["int8", "int8", "fp16"]
    assert [wan22.defaults(t)["PRECISION"] for t in ("draft", "standard", "final")] == ["int8", "bf16", "bf16"]
    # a server whose runner has no INT8 kernels (torch): the draft runs fp8, the default falls back to full precision
    torch_unet3d, torch_wan22 = unet3d.served([t for t in unet3d.tracks if t != "int8"]), wan22.served(["bf16", "fp8"])
    assert [torch_unet3d.defaults(t)["PRECISION"] for t in ("draft", "standard", "final")] == ["fp8", "fp16", "fp16"]
    assert [torch_wan22.defaults(t)["PRECISION"] for t in ("draft", "standard", "final")] == ["fp8", "bf16", "bf16"]
    assert torch_unet3d.unserved_tracks == ["int8"] and "int8" not in torch_unet3d.tracks
    assert "fp16" not in QUANTIZED_TRACKS and "bf16" not in QUANTIZED_TRACKS


def test_only_the_draft_caches_steps_by_default() -> None:
    assert {name: tier.step_cache_threshold for name, tier in QUALITY_TIERS.items()} == {"draft": DRAFT_STEP_CACHE, "standard": 0.0, "final": 0.0}
    assert [_geometry("tiny", 8).defaults(t)["STEP_CACHE"] for t in ("draft", "standard", "final")] == [DRAFT_STEP_CACHE, 0.0, 0.0]


def _prompt(**extra) -> dict[str, np.ndarray]:
    arrays = {"PROMPT": np.array([b"a cat"], dtype=object)}
    for name, value in extra.items():
        arrays[name] = np.array([value], dtype=object if isinstance(value, bytes) else np.int32)
    return arrays


def test_explicit_parameters_override_the_tier(geometry) -> None:
    draft = geometry.defaults("draft")
    resolved = resolve(_prompt(PRESET=b"draft"), geometry)
    assert (resolved.height, resolved.width, resolved.steps, resolved.precision) == (
        draft["HEIGHT"], draft["WIDTH"], draft["STEPS"], draft["PRECISION"])
    overridden = resolve(_prompt(PRESET=b"draft", STEPS=7, PRECISION=b"fp16"), geometry)
    assert (overridden.steps, overridden.precision, overridden.height) == (7, "fp16", draft["HEIGHT"])
    assert resolve(_prompt(SEED=5), geometry) == resolve(_prompt(PRESET=b"standard", SEED=5), geometry)  # no PRESET: standard


def test_a_distilled_track_brings_its_own_steps_and_guidance() -> None:
    """PRECISION=distilled defaults to the student's STEPS and GUIDANCE_SCALE (its track_defaults.json, carried in the
    geometry) under every tier, unless the request sets them; no tier picks the student by itself."""
    base = _geometry("tiny", 8)
    geometry = replace(base, track_defaults={DISTILLED_TRACK: {"STEPS": 4, "GUIDANCE_SCALE": 1.0}})
    for tier in QUALITY_TIERS:
        values = geometry.defaults(tier, DISTILLED_TRACK)
        assert (values["STEPS"], values["GUIDANCE_SCALE"], values["PRECISION"]) == (4, 1.0, DISTILLED_TRACK)
        assert geometry.defaults(tier)["PRECISION"] != DISTILLED_TRACK
        assert geometry.defaults(tier)["STEPS"] == base.defaults(tier)["STEPS"]
    student = resolve(_prompt(PRECISION=DISTILLED_TRACK.encode()), geometry)
    assert (student.steps, student.guidance_scale, student.precision) == (4, 1.0, DISTILLED_TRACK)
    explicit = resolve({**_prompt(PRECISION=DISTILLED_TRACK.encode(), STEPS=6), "GUIDANCE_SCALE": np.array([2.0], np.float32)}, geometry)
    assert (explicit.steps, explicit.guidance_scale) == (6, 2.0)
    draft = resolve(_prompt(PRESET=b"draft", PRECISION=DISTILLED_TRACK.encode()), geometry)
    assert (draft.steps, draft.height) == (4, geometry.defaults("draft")["HEIGHT"])  # the tier's size, the student's steps
    # tracks in another order (t2v_model.json sorts its keys) and a student without defaults: still never a tier's
    shuffled = replace(base, tracks={DISTILLED_TRACK: ["unet_distilled"], "fp16": ["unet"], "int8": ["unet_int8"]})
    assert [shuffled.defaults(t)["PRECISION"] for t in ("draft", "standard", "final")] == ["int8", "int8", "fp16"]
    for bad in ({"STEPS": 0}, {"SEED": 3}):
        with pytest.raises(ValueError, match="track defaults"):
            replace(base, track_defaults={DISTILLED_TRACK: bad})
    with pytest.raises(ValueError, match="track defaults"):
        replace(base, tracks={"fp16": ["unet"]}, track_defaults={DISTILLED_TRACK: {"STEPS": 4}})


def test_unknown_preset_is_refused_naming_the_allowed_tiers(geometry) -> None:
    with pytest.raises(ParameterError, match="PRESET: 'ultra' is not allowed; allowed: draft, standard, final"):
        resolve(_prompt(PRESET=b"ultra"), geometry)


def test_served_tiers_route_and_size_the_clip(server, grpc_client, geometry, measure_steps) -> None:
    """draft: its resolution and steps on the quantized UNet, its step cache on; final (steps overridden): the full-precision UNet."""
    draft = geometry.defaults("draft")
    before = stage_times(server.grpc_url)
    run = lambda: grpc_client.generate(GenerationRequest("a blue ball bouncing", seed=2, preset="draft"))  # noqa: E731
    clip, calls, steps, skipped = measure_steps(server, run, "scheduler", "unet_int8")
    after_draft = stage_times(server.grpc_url)
    grpc_client.generate(GenerationRequest("a blue ball bouncing", seed=2, preset="final", steps=2))
    after_final = stage_times(server.grpc_url)
    assert clip.video.shape == (draft["NUM_FRAMES"], draft["HEIGHT"], draft["WIDTH"], 3)
    assert steps == draft["STEPS"] and calls == steps - skipped and after_draft["unet"][0] == before["unet"][0]
    assert after_final["unet"][0] - after_draft["unet"][0] == 2 and after_final["unet_int8"][0] == after_draft["unet_int8"][0]
    with pytest.raises(InferenceServerException) as info:
        grpc_client.generate(GenerationRequest("a cat", preset="ultra"))
    assert str(info.value.status()) == "StatusCode.INVALID_ARGUMENT"
    assert "PRESET: 'ultra' is not allowed; allowed: draft, standard, final" in info.value.message()


def test_the_cuda_pool_holds_each_denoising_requests_tensors(geometry, components) -> None:
    """``ModelGeometry.transfer_pool_bytes`` (the bench's ``--cuda-memory-pool-byte-size``) holds, for each of the
    SCHEDULER_INSTANCES requests denoising at once, the K/V the projector makes for a CFG pair and the clip's uint8
    frames, twice over; never below 1 GiB."""
    import torch

    from t2vserve.families.unet3d import KVProjector
    from t2vserve.spec import CFG_BATCH, SCHEDULER_INSTANCES

    with torch.no_grad():
        kv = KVProjector(components.unet)(torch.zeros(CFG_BATCH, geometry.text_max_length, geometry.text_hidden_size))
    kv_bytes = kv.numel() * 4  # fp32 on the wire
    assert geometry.transfer_pool_bytes(64, 64, 8) == 2**30  # the tiny model's tensors fit the floor
    height, width, frames = 1024, 1024, 512  # a clip whose frames alone pass the floor
    assert geometry.transfer_pool_bytes(height, width, frames) >= 2 * SCHEDULER_INSTANCES * (kv_bytes + frames * height * width * 3) > 2**30

"""Integration: a real tritonserver, real gRPC and HTTP requests through the t2v ensemble."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from t2vserve.client import GenerationRequest
from t2vserve.spec import PRESETS, USED_SEED
from t2vserve.video import decode_mp4

PROMPT = "a red panda eating bamboo in a misty forest"
#: Served (ONNX Runtime, cached K/V) vs diffusers' TextToVideoSDPipeline (torch, text embeddings),
#: both fp32 on the CPU, as uint8 frames: at most this many levels apart anywhere, and on average
#: less than MEAN_LEVELS (rounding of nearly identical floats flips a few pixels by one level).
MAX_LEVELS = 2
MEAN_LEVELS = 0.05


def test_generates_clip(client, geometry) -> None:
    preset = PRESETS[geometry.preset]
    result = client.generate(GenerationRequest(PROMPT, seed=1))
    assert result.video.dtype == np.uint8
    assert result.video.shape == (preset.num_frames, preset.height, preset.width, 3)
    frames, fps = decode_mp4(result.mp4)
    assert frames.shape == result.video.shape and fps == preset.fps
    # H.264 (crf 18, 4:2:0 chroma) is lossy: compare luma, where noise-like frames stay within a few levels
    assert np.abs(_luma(frames) - _luma(result.video)).mean() < 4
    assert result.seed == 1


def test_mp4_only_leaves_the_frames_off_the_wire(client) -> None:
    """A client that wants the MP4 only does not receive VIDEO, and the server skips handing the frames on
    (RETURN_FRAMES false); the MP4 is the same clip.

    Same clip, not the same bits: a request batched with another one in the UNet (a request left over
    from an earlier test) computes in a batch of 4, whose float rounding differs; on the full-precision
    track that stays far below one level on average, while another seed's clip is levels away.
    """
    request = GenerationRequest(PROMPT, seed=3, steps=4, precision="fp16")
    full = client.generate(request)
    mp4_only = client.generate(request, outputs=("MP4",))
    assert mp4_only.video is None and mp4_only.seed == 3
    frames, _ = decode_mp4(mp4_only.mp4)
    assert frames.shape == full.video.shape and np.abs(_luma(frames) - _luma(decode_mp4(full.mp4)[0])).mean() < 0.5
    # RETURN_FRAMES false (what generate sent above): VIDEO, asked for anyway, has no frames; the MP4 has them all
    empty = client.generate(replace(request, return_frames=False))
    assert empty.video.shape == (0, *full.video.shape[1:]) and decode_mp4(empty.mp4)[0].shape == full.video.shape
    with pytest.raises(ValueError, match="outputs must include MP4"):
        client.generate(GenerationRequest(PROMPT, seed=3), outputs=("VIDEO",))


def _luma(video: np.ndarray) -> np.ndarray:
    return video.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def test_non_default_parameters_are_honoured(client, geometry) -> None:
    m = geometry.pixel_multiple
    preset = PRESETS[geometry.preset]
    height, width = preset.height_range[0], preset.width_range[0] + m
    request = GenerationRequest(
        PROMPT, negative_prompt="blurry", steps=3, guidance_scale=3.0, seed=5, height=height, width=width, num_frames=3, fps=12
    )
    result = client.generate(request)
    assert result.video.shape == (3, height, width, 3)
    assert decode_mp4(result.mp4)[1] == 12


def test_same_seed_same_frames_other_seed_other_frames(server, client, grpc_client) -> None:
    first = client.generate(GenerationRequest(PROMPT, seed=123, steps=4))
    again = grpc_client.generate(GenerationRequest(PROMPT, seed=123, steps=4))
    other = client.generate(GenerationRequest(PROMPT, seed=124, steps=4))
    np.testing.assert_array_equal(first.video, again.video)
    assert np.abs(first.video.astype(int) - other.video.astype(int)).mean() > 1.0


def test_omitted_seed_is_random_and_returned(grpc_client) -> None:
    a = grpc_client.generate(GenerationRequest(PROMPT, steps=1))
    b = grpc_client.generate(GenerationRequest(PROMPT, steps=1))
    assert a.seed != b.seed
    np.testing.assert_array_equal(grpc_client.generate(GenerationRequest(PROMPT, steps=1, seed=a.seed)).video, a.video)


def test_a_request_for_the_used_seed_alone_gets_it(server) -> None:
    """A raw request that asks for USED_SEED only (tritonclient, no VIDEO or MP4) gets the seed it gave, or the one
    the server drew; the ensemble output is preprocess's own, not the tensor the scheduler consumes."""
    import tritonclient.grpc as grpcclient

    def used_seed(seed: int | None) -> np.ndarray:
        inputs = []
        for name, value in GenerationRequest(PROMPT, seed=seed, steps=1).tensors().items():
            inputs.append(grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype)))
            inputs[-1].set_data_from_numpy(value)
        with grpcclient.InferenceServerClient(server.grpc_url) as raw:
            result = raw.infer("t2v", inputs, outputs=[grpcclient.InferRequestedOutput(USED_SEED)])
        assert result.as_numpy("VIDEO") is None and result.as_numpy("MP4") is None
        return result.as_numpy(USED_SEED)

    assert used_seed(77).tolist() == [77]
    drawn = used_seed(None)
    assert drawn.dtype == np.int64 and drawn.shape == (1,) and 0 <= int(drawn[0]) < 2**63


@pytest.mark.parametrize("guidance", [6.0, 1.0])
def test_served_clip_equals_diffusers_pipeline(grpc_client, server, tiny_model_dir, geometry, guidance: float) -> None:
    """Independent reference: diffusers' own TextToVideoSDPipeline with DDIM, same weights and seed. At guidance 1
    both skip the unconditional branch: the UNet runs once per step at batch 1 (Triton's batch statistics)."""
    from diffusers import DDIMScheduler, TextToVideoSDPipeline

    from t2vserve.bench.common import model_stats

    preset = PRESETS[geometry.preset]
    pipe = TextToVideoSDPipeline.from_pretrained(str(tiny_model_dir))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    seed, steps, negative = 7, 6, "low quality"
    reference = pipe(
        PROMPT,
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=preset.height,
        width=preset.width,
        num_frames=preset.num_frames,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).frames[0]
    expected = np.round(np.asarray(reference) * 255).astype(int)
    before = model_stats(server.grpc_url)["unet"]
    served = grpc_client.generate(
        GenerationRequest(PROMPT, negative_prompt=negative, steps=steps, guidance_scale=guidance, seed=seed, precision="fp16")
    ).video.astype(int)
    after = model_stats(server.grpc_url)["unet"]
    assert served.shape == expected.shape
    diff = np.abs(served - expected)
    assert diff.max() <= MAX_LEVELS and diff.mean() < MEAN_LEVELS, (diff.max(), diff.mean())
    batch = 2 if guidance > 1 else 1
    assert after["inferences"] - before["inferences"] == steps * batch  # samples: the CFG pair, or the conditional half
    executed = after["batches"][batch]["count"] - before["batches"].get(batch, {"count": 0})["count"]
    assert executed == steps, after["batches"]


def _invalid_cases(geometry) -> list[tuple[str, dict, str]]:
    preset, m = PRESETS[geometry.preset], geometry.pixel_multiple
    return [
        ("PROMPT", {"prompt": ""}, "must not be empty"),
        ("PROMPT", {"prompt": "   "}, "must not be empty"),
        ("PROMPT", {"prompt": b"\xff\xfe bad utf-8"}, "must be valid UTF-8"),
        ("PROMPT", {"prompt": "x" * 2001}, "allowed at most 2000"),
        ("PROMPT", {"prompt": " ".join(["zebra"] * 100)}, "allowed at most 75 tokens"),
        ("NEGATIVE_PROMPT", {"negative_prompt": b"\xc3\x28"}, "must be valid UTF-8"),
        ("STEPS", {"steps": 0}, "allowed [1, 100]"),
        ("STEPS", {"steps": 101}, "allowed [1, 100]"),
        ("GUIDANCE_SCALE", {"guidance_scale": 0.5}, "allowed [1, 30]"),
        ("GUIDANCE_SCALE", {"guidance_scale": float("nan")}, "allowed [1, 30]"),
        ("SEED", {"seed": -1}, "allowed [0, 9223372036854775807]"),
        ("HEIGHT", {"height": preset.height_range[1] + m}, f"a multiple of {m}"),
        ("HEIGHT", {"height": preset.height + 1}, f"a multiple of {m}"),
        ("WIDTH", {"width": preset.width_range[0] - m}, f"a multiple of {m}"),
        ("WIDTH", {"width": preset.width + m // 2}, f"a multiple of {m}"),
        ("NUM_FRAMES", {"num_frames": 0}, f"allowed [{preset.frames_range[0]}, {preset.frames_range[1]}]"),
        ("NUM_FRAMES", {"num_frames": preset.frames_range[1] + 1}, "allowed ["),
        ("FPS", {"fps": 0}, "allowed [1, 60]"),
        ("FPS", {"fps": 61}, "allowed [1, 60]"),
        ("PRECISION", {"precision": "fp4"}, f"allowed: {', '.join(geometry.tracks)}"),
        ("SAMPLER", {"sampler": "unipc"}, "allowed: ddim"),
    ]


def test_invalid_parameters_get_invalid_arg_and_server_keeps_serving(client, geometry) -> None:
    for name, overrides, message in _invalid_cases(geometry):
        request = GenerationRequest(**{"prompt": PROMPT, "steps": 1, "seed": 0, **overrides})
        with pytest.raises(InferenceServerException) as info:
            client.generate(request)
        status = str(info.value.status())
        assert status in ("StatusCode.INVALID_ARGUMENT", "400"), (name, status, info.value.message())
        assert f"{name}:" in info.value.message() and message in info.value.message(), info.value.message()
    assert client.generate(GenerationRequest(PROMPT, steps=1, seed=0)).video.shape[0] == PRESETS[geometry.preset].num_frames


def test_request_without_prompt_is_refused_naming_it(client, geometry) -> None:
    """Triton counts required inputs only: without PROMPT but with STEPS the ensemble used to stall
    ("unexpected deadlock"). Every input is optional to Triton; preprocess says PROMPT is required."""
    for request in (GenerationRequest(None, steps=1, seed=0), GenerationRequest(None)):  # type: ignore[arg-type]
        with pytest.raises(InferenceServerException) as info:
            client.generate(request)
        assert str(info.value.status()) in ("StatusCode.INVALID_ARGUMENT", "400"), info.value.message()
        assert "PROMPT: is required" in info.value.message() and "deadlock" not in info.value.message()
    frames = PRESETS[geometry.preset].num_frames
    assert client.generate(GenerationRequest(PROMPT, steps=1, seed=0)).video.shape[0] == frames


def test_both_unet_tracks_through_the_server(client, server) -> None:
    """PRECISION routes the scheduler's BLS calls: int8 (default) and fp16 are different UNet entries."""
    import tritonclient.grpc as grpcclient

    def unet_executions() -> dict[str, int]:
        with grpcclient.InferenceServerClient(server.grpc_url) as stats_client:
            stats = stats_client.get_inference_statistics(as_json=True)["model_stats"]
        return {m["name"]: int(m.get("execution_count", 0)) for m in stats if m["name"] in ("unet", "unet_int8")}

    before = unet_executions()
    default = client.generate(GenerationRequest(PROMPT, seed=11, steps=3))
    after_default = unet_executions()
    int8 = client.generate(GenerationRequest(PROMPT, seed=11, steps=3, precision="int8"))
    fp16 = client.generate(GenerationRequest(PROMPT, seed=11, steps=3, precision="fp16"))
    after = unet_executions()
    assert after_default["unet_int8"] - before["unet_int8"] == 3 and after_default["unet"] == before["unet"]
    assert after["unet_int8"] - after_default["unet_int8"] == 3 and after["unet"] - after_default["unet"] == 3
    np.testing.assert_array_equal(default.video, int8.video)
    assert not np.array_equal(int8.video, fp16.video)  # quantized math differs ...
    assert np.abs(int8.video.astype(int) - fp16.video.astype(int)).mean() < 8  # ... but stays close

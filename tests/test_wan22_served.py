"""Integration, wan22: the tiny Wan2.2 model exported (dynamo ONNX) and served by a real tritonserver.

References are diffusers' own ``WanPipeline`` (TI2V-5B layout with ``expand_timesteps``; A14B layout
with two experts and ``boundary_ratio``) with the same weights, seed and scheduler.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tritonclient.utils import InferenceServerException

from t2vserve.client import GenerationRequest, T2VClient
from t2vserve.export import export_model
from t2vserve.families import get_family
from t2vserve.families.wan22_tiny import Z16_VAE_CONFIG
from t2vserve.quality.metrics import clip_metrics
from t2vserve.server import EmbeddedTritonServer
from t2vserve.spec import PRESETS
from t2vserve.geometry import GEOMETRY_FILE, ModelGeometry

PRESET = PRESETS["wan22-tiny"]
PROMPT = "a red ball rolls to the left on a black floor"
#: Served (ONNX Runtime or the torch runner; cached K/V; CFG as one batch-2 call) vs WanPipeline
#: (torch, text embeddings, two batch-1 calls per step), fp32 on the CPU, as uint8 frames.
MAX_LEVELS = 2
MEAN_LEVELS = 0.05


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    """The layout of the trained demo model (the wider transformer of ``training_variant``), random weights."""
    family = get_family("wan22")
    return family.build_tiny_model(tmp_path_factory.mktemp("wan") / "tiny-wan22", **family.training_variant())


@pytest.fixture(scope="module")
def wan_repository(wan_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("wan-repo") / "model_repository"
    export_model(wan_dir, root, "wan22-tiny", calibration_prompts=1)  # the quantized twins: one calibration trajectory
    return root


@pytest.fixture(scope="module")
def wan_server(wan_repository, tmp_path_factory):
    with EmbeddedTritonServer(wan_repository, log_path=tmp_path_factory.mktemp("wan-log") / "tritonserver.log") as srv:
        yield srv


@pytest.fixture(scope="module", params=["grpc", "http"])
def wan_client(request, wan_server):
    url = wan_server.grpc_url if request.param == "grpc" else wan_server.http_url
    with T2VClient(url, request.param) as c:
        yield c


def _reference(model_dir, scheduler=None, **kwargs) -> np.ndarray:
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(str(model_dir))
    if scheduler is not None:
        pipe.scheduler = scheduler(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(kwargs.pop("seed")), output_type="np", **kwargs).frames[0]
    return np.round(np.asarray(frames) * 255).astype(int)


def _close(served: np.ndarray, expected: np.ndarray) -> None:
    assert served.shape == expected.shape
    diff = np.abs(served.astype(int) - expected)
    assert diff.max() <= MAX_LEVELS and diff.mean() < MEAN_LEVELS, (diff.max(), diff.mean())


def test_geometry_of_the_tiny_wan_model(wan_repository) -> None:
    geometry = ModelGeometry.load(wan_repository / "scheduler" / "1" / GEOMETRY_FILE)
    assert (geometry.family, geometry.latent_channels, geometry.vae_temporal_factor, geometry.pixel_multiple) == ("wan22", 48, 4, 32)
    assert geometry.tracks == {"bf16": ["transformer"], "fp8": ["transformer_fp8"], "int8": ["transformer_int8"]}
    assert geometry.samplers == ["unipc", "euler"]
    assert geometry.latent_shape(64, 96, 9) == (1, 48, 3, 4, 6)


@pytest.mark.parametrize("sampler", ["unipc", "euler"])
def test_served_clip_equals_wan_pipeline(wan_client, wan_dir, sampler: str) -> None:
    """Both samplers, default negative prompt (Wan's own), against WanPipeline with the matching diffusers scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    euler = (lambda config: FlowMatchEulerDiscreteScheduler(shift=config["flow_shift"])) if sampler == "euler" else None
    steps, guidance, seed = 5, 5.0, 3
    expected = _reference(wan_dir, euler, negative_prompt=PRESET.negative_prompt, num_inference_steps=steps,
                          guidance_scale=guidance, height=PRESET.height, width=PRESET.width, num_frames=PRESET.num_frames, seed=seed)
    served = wan_client.generate(GenerationRequest(PROMPT, steps=steps, guidance_scale=guidance, seed=seed, sampler=sampler))
    _close(served.video, expected)


def test_deterministic_per_seed_over_both_protocols(wan_server, wan_client) -> None:
    request = GenerationRequest(PROMPT, steps=2, seed=9, num_frames=5, height=32, width=64)
    with T2VClient(wan_server.grpc_url, "grpc") as grpc_client:
        first = grpc_client.generate(request)
    again = wan_client.generate(request)
    other = wan_client.generate(GenerationRequest(PROMPT, steps=2, seed=10, num_frames=5, height=32, width=64))
    assert first.video.shape == (5, 32, 64, 3)
    np.testing.assert_array_equal(first.video, again.video)
    assert not np.array_equal(first.video, other.video)


def _invalid_cases() -> list[tuple[str, dict, str]]:
    high_frames = PRESET.frames_range[1]
    return [
        ("NUM_FRAMES", {"num_frames": 8}, f"allowed [1, {high_frames}], 4k+1"),
        ("NUM_FRAMES", {"num_frames": high_frames + 4}, "4k+1"),
        ("HEIGHT", {"height": 48}, "a multiple of 32"),
        ("WIDTH", {"width": PRESET.width_range[1] + 32}, "a multiple of 32"),
        ("SAMPLER", {"sampler": "ddim"}, "allowed: unipc, euler"),
        ("PRECISION", {"precision": "fp16"}, "allowed: bf16, fp8, int8"),
        ("PROMPT", {"prompt": " ".join(["zebra"] * 330)}, "allowed at most 511 tokens"),  # < 2000 characters
        ("STEPS", {"steps": 101}, "allowed [1, 100]"),
        ("GUIDANCE_SCALE", {"guidance_scale": 31.0}, "allowed [1, 30]"),
        ("STEP_CACHE", {"step_cache": 1.5}, "allowed [0, 1]"),
    ]


def test_invalid_parameters_get_invalid_arg(wan_client) -> None:
    for name, overrides, message in _invalid_cases():
        with pytest.raises(InferenceServerException) as info:
            wan_client.generate(GenerationRequest(**{"prompt": PROMPT, "steps": 1, "seed": 0, **overrides}))
        assert str(info.value.status()) in ("StatusCode.INVALID_ARGUMENT", "400"), (name, info.value.message())
        assert f"{name}:" in info.value.message() and message in info.value.message(), info.value.message()
    assert wan_client.generate(GenerationRequest(PROMPT, steps=1, seed=0)).video.shape == (PRESET.num_frames, PRESET.height, PRESET.width, 3)


#: The step cache on the tiny (random-weight) Wan model, 10 UniPC steps: threshold, and the floor of the
#: cached clip's PSNR against the uncached one (measured at 0.3: 5 of 10 steps skipped, 45.1 to 45.8 dB on 24 clips,
#: docs/bench/step-cache-sweep-wan22.md).
WAN_STEP_CACHE = 0.3
WAN_MIN_PSNR_DB = 38.0


def test_step_cache_skips_transformer_executions(wan_server, measure_steps) -> None:
    with T2VClient(wan_server.grpc_url, "grpc") as client:
        request = GenerationRequest(PROMPT, seed=3)
        generate = lambda r: lambda: client.generate(r)  # noqa: E731
        full, calls, steps, skipped = measure_steps(wan_server, generate(request), "scheduler", "transformer")
        assert calls == steps == PRESET.steps and skipped == 0
        cached, calls, steps, skipped = measure_steps(wan_server, generate(replace(request, step_cache=WAN_STEP_CACHE)), "scheduler", "transformer")
    assert steps == PRESET.steps and 0 < skipped and calls == steps - skipped
    assert clip_metrics(full.video, cached.video)["psnr_db"] >= WAN_MIN_PSNR_DB


def _executions(url: str) -> dict[str, int]:
    """Triton's execution count of every transformer entry."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as stats_client:
        stats = stats_client.get_inference_statistics(as_json=True)["model_stats"]
    return {m["name"]: int(m.get("execution_count", 0)) for m in stats if m["name"].startswith("transformer")}


@pytest.mark.parametrize("track", ["int8", "fp8"])
def test_quantized_tracks_run_their_q_dq_graphs(wan_server, wan_repository, track: str) -> None:
    """One short clip per quantized track through the server: its own entry ran every step (ONNX Runtime on
    the Q/DQ graph exported through TorchScript), and export's two-sided check passed."""
    import json

    from t2vserve.export import QUANTIZATION_REPORT

    report = json.loads((wan_repository / f"transformer_{track}" / "1" / QUANTIZATION_REPORT).read_text())
    assert report["check_passed"] and report["format"] == track and report["qdq"]["weights"] == report["quantized_layers"] > 0
    steps = 2
    before = _executions(wan_server.grpc_url)
    with T2VClient(wan_server.grpc_url, "grpc") as client:
        video = client.generate(GenerationRequest(PROMPT, steps=steps, seed=5, num_frames=5, height=32, width=32, precision=track)).video
    after = _executions(wan_server.grpc_url)
    assert video.shape == (5, 32, 32, 3)
    assert {e: after[e] - before[e] for e in after} == {"transformer": 0, f"transformer_{track}": steps,
                                                        **{f"transformer_{t}": 0 for t in ("int8", "fp8") if t != track}}


# --------------------------------------------------------------------------------------------------
# The A14B layout: two experts, switched at the boundary timestep (torch runner: no ONNX export needed)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def experts_dir(tmp_path_factory):
    """A14B as it ships: two experts over Wan2.1's z16 VAE (8x spatial, no patching)."""
    return get_family("wan22").build_tiny_model(tmp_path_factory.mktemp("wan2") / "tiny-wan22-a14b", seed=1, experts=2, vae=Z16_VAE_CONFIG)


@pytest.fixture(scope="module")
def experts_server(experts_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("wan2-repo") / "model_repository"
    export_model(experts_dir, root, "wan22-tiny", onnx=False)
    with EmbeddedTritonServer(root, runner="torch", log_path=tmp_path_factory.mktemp("wan2-log") / "tritonserver.log") as srv:
        yield srv, ModelGeometry.load(root / "scheduler" / "1" / GEOMETRY_FILE)


def test_two_experts_switch_at_the_boundary_like_wan_pipeline(experts_server, experts_dir) -> None:
    from t2vserve.samplers import make_sampler

    server, geometry = experts_server
    assert geometry.tracks["bf16"] == ["transformer", "transformer_2"] and geometry.boundary_ratio == 0.875
    assert (geometry.latent_channels, geometry.vae_scale_factor, geometry.pixel_multiple) == (16, 8, 16)  # from the z16 VAE's config
    assert geometry.tracks["fp8"] == ["transformer_fp8", "transformer_2_fp8"]

    def executions() -> dict[str, int]:
        return _executions(server.grpc_url)

    steps, seed = 8, 4
    timesteps = make_sampler("unipc", geometry.scheduler_config).trajectory(steps).timesteps
    high = sum(t >= geometry.boundary_timestep for t in timesteps)
    assert 0 < high < steps  # the trajectory crosses the boundary
    before = executions()
    with T2VClient(server.grpc_url, "grpc") as client:
        served = client.generate(GenerationRequest(PROMPT, steps=steps, seed=seed, guidance_scale=4.0)).video
    after = executions()
    assert after["transformer"] - before["transformer"] == high
    assert after["transformer_2"] - before["transformer_2"] == steps - high
    expected = _reference(experts_dir, negative_prompt=PRESET.negative_prompt, num_inference_steps=steps, guidance_scale=4.0,
                          height=PRESET.height, width=PRESET.width, num_frames=PRESET.num_frames, seed=seed)
    _close(served, expected)


def test_torch_runner_runs_fp8_with_fp8_gemms_and_refuses_int8(experts_server) -> None:
    """The torch runner: PRECISION=fp8 runs both experts' FP8 entries (E4M3 GEMMs, torch._scaled_mm, CPU path
    here); PRECISION=int8 has no INT8 kernels there and is refused naming PRECISION and the served tracks."""
    server, geometry = experts_server
    steps = 3
    before = _executions(server.grpc_url)
    with T2VClient(server.grpc_url, "grpc") as client:
        video = client.generate(GenerationRequest(PROMPT, steps=steps, seed=2, num_frames=5, height=32, width=32, precision="fp8")).video
        with pytest.raises(InferenceServerException) as refused:
            client.generate(GenerationRequest(PROMPT, steps=1, seed=2, precision="int8"))
    after = _executions(server.grpc_url)
    assert video.shape == (5, 32, 32, 3)
    ran = {e: after[e] - before[e] for e in after if after[e] != before[e]}
    assert set(ran) == {"transformer_fp8", "transformer_2_fp8"} and sum(ran.values()) == steps
    assert str(refused.value.status()) == "StatusCode.INVALID_ARGUMENT"
    assert "PRECISION:" in refused.value.message() and "allowed: bf16, fp8" in refused.value.message(), refused.value.message()
    log = server.log_path.read_text()
    assert "transformer_fp8: kernels: " in log and "E4M3 GEMMs" in log and "transformer_int8: kernels: none" in log

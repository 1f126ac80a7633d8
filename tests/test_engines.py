"""TensorRT plans without a GPU: profiles from spec, plan metadata, stale-plan detection and refusal, the CLI.

The TensorRT calls themselves (t2vserve/tensorrt_builder.py) are type-checked by `make typecheck`
(mypy against tensorrt-stubs, run by .ci/run before the tests); here a fake backend stands in for them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest

from t2vserve import engines, engines_cli
from t2vserve.engines import (
    BuilderSettings,
    BuildJob,
    EngineError,
    EngineMetadata,
    RuntimeInfo,
    ShapeRange,
    TensorRTUnavailable,
)
from t2vserve.families import get_family
from t2vserve.batcher_delay import current_queue_delay, set_queue_delay
from t2vserve.deployment import deployed_tracks, write_deployment
from t2vserve.repository import render_repository, slot_tensors, stale_files
from t2vserve.spec import DENOISER_MAX_BATCH, DENOISER_QUEUE_DELAY_US, KV, LATENTS, SAMPLE, TIMESTEP
from t2vserve.geometry import GEOMETRY_FILE, KVLayout, ModelGeometry

A100 = RuntimeInfo("10.5.0", "NVIDIA A100-SXM4-80GB", "8.0")
UNET3D = get_family("unet3d")
ENGINE_SLOTS = [slot.name for slot in UNET3D.slots()]


def _geometry(preset: str) -> ModelGeometry:
    """Geometries as the unet3d family derives them: the tiny demo model and ModelScope text-to-video-ms, each
    with a distilled student (every declared track: the optional unet_distilled slot is built too)."""
    tracks = {"geometry": dict(tracks=UNET3D.tracks(), default_precision="int8", samplers=["ddim"])}["geometry"]
    if preset == "tiny":
        layers = [("down.attn2", 8, 4), ("up.0.attn2", 8, 4), ("up.1.attn2", 8, 4), ("mid.attn2", 16, 4)]
        return ModelGeometry("unet3d", "tiny", 4, 4, 2, 0.18215, 77, 32, 1000, KVLayout.from_layers(layers), **tracks)
    layers = [(f"block{i}.attn2", 5 * (1 + i % 4), 64) for i in range(16)]
    return ModelGeometry("unet3d", "modelscope", 4, 8, 8, 0.18215, 77, 1024, 1000, KVLayout.from_layers(layers), **tracks)


@pytest.fixture(params=["tiny", "modelscope"])
def geometry(request) -> ModelGeometry:
    return _geometry(request.param)


# --------------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------------
def test_profiles_name_every_onnx_input_with_its_rank(geometry) -> None:
    for declared in UNET3D.slots():
        slot = declared.name
        (profile,) = engines.slot_profiles(slot, geometry)
        inputs, _ = slot_tensors(declared)
        assert list(profile) == [t.name for t in inputs], slot
        for tensor in inputs:
            shape = profile[tensor.name]
            assert len(shape.min) == len(tensor.dims), (slot, tensor.name)
            assert all(lo <= mid <= hi for lo, mid, hi in zip(shape.min, shape.opt, shape.max))
            for axis, dim in enumerate(tensor.dims):
                if dim != -1:
                    assert shape.min[axis] == shape.max[axis] == dim


EXPECTED_SAMPLE = {  # worked out by hand from the presets: pixels // VAE scale, frames as given
    "tiny": ((1, 4, 1, 8, 8), (2, 4, 8, 16, 16), (8, 4, 16, 32, 32)),
    "modelscope": ((1, 4, 8, 32, 32), (2, 4, 24, 40, 72), (8, 4, 32, 72, 128)),
}


def test_unet_profiles_cfg_batch_frames_and_latent_resolution(geometry) -> None:
    for slot in ("unet", "unet_int8"):
        (profile,) = engines.slot_profiles(slot, geometry)
        sample = profile[SAMPLE]
        assert (sample.min, sample.opt, sample.max) == EXPECTED_SAMPLE[geometry.preset]
        # batch 1: a guidance-free request (GUIDANCE_SCALE 1, the distilled track); 2 a CFG pair
        assert profile[TIMESTEP] == ShapeRange((1,), (2,), (DENOISER_MAX_BATCH,))
        width = geometry.kv_layout.width
        assert profile[KV] == ShapeRange((1, 77, width), (2, 77, width), (DENOISER_MAX_BATCH, 77, width))
        # Triton refuses a config whose max_batch_size exceeds what the plan's profile allows
        assert sample.max[0] >= UNET3D.slot(slot).max_batch


def test_text_and_vae_profiles(geometry) -> None:
    (text,) = engines.slot_profiles("text_encoder", geometry)
    assert text["INPUT_IDS"] == ShapeRange((1, 77), (2, 77), (DENOISER_MAX_BATCH, 77))
    (kv,) = engines.slot_profiles("kv_projector", geometry)
    hidden = geometry.text_hidden_size
    assert kv["TEXT_EMBEDS"] == ShapeRange((1, 77, hidden), (2, 77, hidden), (DENOISER_MAX_BATCH, 77, hidden))
    (vae,) = engines.slot_profiles("vae_decoder", geometry)
    assert vae[LATENTS] == EXPECTED_LATENTS[geometry.preset]  # one clip's latents: [1, C, frames, h, w]


EXPECTED_LATENTS = {
    "tiny": ShapeRange((1, 4, 1, 8, 8), (1, 4, 8, 16, 16), (1, 4, 16, 32, 32)),
    "modelscope": ShapeRange((1, 4, 8, 32, 32), (1, 4, 24, 40, 72), (1, 4, 32, 72, 128)),
}


def test_every_request_the_preset_accepts_fits_the_profile(geometry) -> None:
    ranges, scale = geometry.ranges(), geometry.vae_scale_factor
    (profile,) = engines.slot_profiles("unet", geometry)
    sample = profile[SAMPLE]
    for name, axis in (("HEIGHT", 3), ("WIDTH", 4)):
        allowed = [v for v in range(int(ranges[name].low), int(ranges[name].high) + 1) if ranges[name].contains(v)]
        assert allowed, name
        assert sample.min[axis] == min(allowed) // scale and sample.max[axis] == max(allowed) // scale
    frames = ranges["NUM_FRAMES"]
    assert (sample.min[2], sample.max[2]) == (frames.low, frames.high)
    assert sample.opt[2:] == (
        geometry.presets.num_frames,
        geometry.presets.height // scale,
        geometry.presets.width // scale,
    )


def test_ranges_round_to_allowed_grid_values() -> None:
    from t2vserve.spec import Range

    assert Range(250, 580, 64).grid_values() == (256, 576)
    assert Range(5, 121, 4, remainder=1).grid_values() == (5, 121)
    assert Range(2, 20, 4, remainder=1).grid_values() == (5, 17)


def _wan_geometry(experts: int = 1) -> ModelGeometry:
    """Wan2.2 TI2V-5B as the wan22 family derives it (30 blocks of 24 x 128 heads, z48, 16x spatial, 4x temporal)."""
    layers = [(f"blocks.{i}.attn2", 24, 128) for i in range(30)]
    tracks = get_family("wan22").tracks(experts)
    return ModelGeometry("wan22", "wan22-480p", 48, 16, 2, 1.0, 512, 4096, 256384, KVLayout.from_layers(layers), tracks,
                         "bf16", ["unipc", "euler"], vae_temporal_factor=4, boundary_ratio=0.875 if experts == 2 else None)


@pytest.mark.parametrize("experts", [1, 2])
def test_wan22_profiles_latent_frames_and_experts(experts: int) -> None:
    """Worked out by hand: frames 5..121 (4k+1) -> latent 2..31 (opt 81 -> 21); 256..736 x 256..1280 px -> /16."""
    geometry = _wan_geometry(experts)
    slots = get_family("wan22").slots_of(geometry)
    experts_slots = [e + twin for e in ["transformer", "transformer_2"][:experts] for twin in ("", "_fp8", "_int8")]
    assert [s.name for s in slots] == ["text_encoder", "kv_projector", *experts_slots, "vae_decoder"]
    quantized = {e + twin: precision for e in ["transformer", "transformer_2"][:experts] for twin, precision in (("_fp8", "fp8"), ("_int8", "int8+bf16"))}
    assert {s.name: s.precision for s in slots if s.precision != "bf16"} == {"text_encoder": "fp32", **quantized}
    for entry in [e for track in geometry.tracks.values() for e in track]:  # the quantized twins share the expert's profile
        (profile,) = engines.slot_profiles(entry, geometry)
        assert profile[SAMPLE] == ShapeRange((1, 48, 2, 16, 16), (2, 48, 21, 30, 52), (8, 48, 31, 46, 80))
        assert profile[KV] == ShapeRange((1, 512, 184320), (2, 512, 184320), (8, 512, 184320))
    (vae,) = engines.slot_profiles("vae_decoder", geometry)
    assert vae[LATENTS] == ShapeRange((1, 48, 2, 16, 16), (1, 48, 21, 30, 52), (1, 48, 31, 46, 80))
    (text,) = engines.slot_profiles("text_encoder", geometry)
    assert text["INPUT_IDS"] == ShapeRange((1, 512), (2, 512), (DENOISER_MAX_BATCH, 512))


def test_shape_range_rejects_inconsistent_shapes() -> None:
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ShapeRange((2, 4), (1, 4), (8, 4))
    with pytest.raises(ValueError, match="ranks differ"):
        ShapeRange((2,), (2, 4), (8, 4))


def test_precision_per_slot() -> None:
    assert {slot.name: slot.precision for slot in UNET3D.slots()} == {
        "text_encoder": "fp16",
        "kv_projector": "fp16",
        "unet": "fp16",
        "unet_int8": "int8",
        "unet_distilled": "fp16",
        "unet_fp8": "fp8",
        "vae_decoder": "fp16",
    }


# --------------------------------------------------------------------------------------------------
# A repository with fake ONNX files and a backend that counts its builds
# --------------------------------------------------------------------------------------------------
class FakeBackend:
    def __init__(self, runtime: RuntimeInfo = A100, fail: bool = False) -> None:
        self.runtime, self.fail, self.jobs = runtime, fail, []

    def runtime_info(self) -> RuntimeInfo:
        return self.runtime

    def build_plan(self, job: BuildJob, log) -> None:
        self.jobs.append(job)
        if self.fail:
            raise EngineError("builder crashed")
        job.plan.write_bytes(b"plan:" + job.onnx.read_bytes())


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "model_repository"
    (root / "scheduler" / "1").mkdir(parents=True)
    (root / "scheduler" / "1" / GEOMETRY_FILE).write_text(_geometry("tiny").to_json())
    for slot in ENGINE_SLOTS:
        (root / slot / "1").mkdir(parents=True)
        (root / slot / "1" / "model.onnx").write_bytes(f"onnx of {slot}".encode())
    return root


def _built(repo: Path, backend: FakeBackend | None = None, **kwargs) -> FakeBackend:
    backend = backend or FakeBackend()
    engines.ensure_engines(repo, ENGINE_SLOTS, backend, log=lambda _: None, **kwargs)
    return backend


def test_metadata_round_trip(repo) -> None:
    _built(repo, settings=BuilderSettings(optimization_level=4, workspace_bytes=2**30, timing_cache="/cache/t.cache"))
    path = repo / "unet_int8" / "1" / "model.plan.json"
    meta = EngineMetadata.read(path)
    assert EngineMetadata.from_json(meta.to_json()) == meta
    assert meta.runtime == A100 and meta.precision == "int8"
    assert meta.profiles == engines.slot_profiles("unet_int8", _geometry("tiny"))
    assert meta.onnx_sha256 == engines.onnx_digest(repo / "unet_int8" / "1" / "model.onnx")
    assert meta.builder == BuilderSettings(4, 2**30, "/cache/t.cache")
    assert meta.plan_bytes == (repo / "unet_int8" / "1" / "model.plan").stat().st_size
    raw = json.loads(path.read_text())
    assert (
        raw["gpu_name"] == A100.gpu_name and raw["compute_capability"] == "8.0" and raw["tensorrt_version"] == "10.5.0"
    )
    raw["format"] = 99
    with pytest.raises(ValueError, match="format"):
        EngineMetadata.from_json(json.dumps(raw))


def test_up_to_date_plans_are_not_rebuilt(repo) -> None:
    backend = _built(repo)
    assert [job.slot for job in backend.jobs] == list(ENGINE_SLOTS)
    assert engines.check_engines(repo, ENGINE_SLOTS, A100) == {}
    lines: list[str] = []
    built = engines.ensure_engines(repo, ENGINE_SLOTS, backend, log=lines.append)
    assert built == [] and len(backend.jobs) == len(ENGINE_SLOTS)
    assert sum("up to date" in line for line in lines) == len(ENGINE_SLOTS)
    assert engines.ensure_engines(repo, ["unet"], backend, rebuild=True, log=lambda _: None) == ["unet"]


def test_only_the_stale_plan_is_rebuilt(repo) -> None:
    backend = _built(repo)
    (repo / "vae_decoder" / "1" / "model.onnx").write_bytes(b"re-exported")
    assert engines.ensure_engines(repo, ENGINE_SLOTS, backend, log=lambda _: None) == ["vae_decoder"]
    assert engines.check_engines(repo, ENGINE_SLOTS, A100) == {}


def test_build_jobs_carry_precision_profiles_and_settings(repo) -> None:
    settings = BuilderSettings(optimization_level=5)
    backend = _built(repo, settings=settings)
    jobs = {job.slot: job for job in backend.jobs}
    assert jobs["unet_int8"].precision == "int8" and jobs["unet"].precision == "fp16"
    assert jobs["unet"].profiles == engines.slot_profiles("unet", _geometry("tiny"))
    assert all(job.settings == settings and job.plan.name == "model.plan" for job in jobs.values())


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda repo: None, None),
        (lambda repo: (repo / "unet" / "1" / "model.plan").unlink(), "missing ("),
        (lambda repo: (repo / "unet" / "1" / "model.plan.json").unlink(), "missing metadata"),
        (lambda repo: (repo / "unet" / "1" / "model.plan.json").write_text("{"), "unreadable metadata"),
        (lambda repo: (repo / "unet" / "1" / "model.plan").write_bytes(b"x"), "replaced or truncated"),
        (lambda repo: (repo / "unet" / "1" / "model.onnx").write_bytes(b"new weights"), "ONNX changed (hash "),
        (lambda repo: (repo / "unet" / "1" / "model.onnx.data").write_bytes(b"external"), "ONNX changed (hash "),
        (lambda repo: (repo / "unet" / "1" / "model.onnx").unlink(), "ONNX missing"),
    ],
)
def test_stale_reasons_for_files(repo, change, reason) -> None:
    _built(repo)
    change(repo)
    stale = engines.check_engines(repo, ENGINE_SLOTS, A100)
    if reason is None:
        assert stale == {}
    else:
        assert list(stale) == ["unet"]
        assert any(reason in r for r in stale["unet"]), stale


def test_stale_for_another_tensorrt_or_gpu(repo) -> None:
    _built(repo)
    newer = replace(A100, tensorrt_version="10.6.0")
    assert engines.stale_reasons(repo, "unet", _geometry("tiny"), newer) == [
        "built for TensorRT 10.5.0, running 10.6.0"
    ]
    h100 = RuntimeInfo("10.5.0", "NVIDIA H100 80GB HBM3", "9.0")
    assert engines.stale_reasons(repo, "unet", _geometry("tiny"), h100) == [
        "built for GPU NVIDIA A100-SXM4-80GB sm_80, this is NVIDIA H100 80GB HBM3 sm_90"
    ]
    # unknown runtime (no TensorRT here): the other checks still pass
    assert engines.stale_reasons(repo, "unet", _geometry("tiny"), None) == []


def test_stale_when_spec_implies_other_profiles_or_precision(repo) -> None:
    _built(repo)
    same_model_other_preset = replace(_geometry("tiny"), preset="modelscope")
    reasons = engines.stale_reasons(repo, "unet", same_model_other_preset, A100)
    assert reasons == ["optimization profiles changed (SAMPLE min [1, 4, 1, 8, 8] -> [1, 4, 8, 64, 64])"]
    meta_path = repo / "unet_int8" / "1" / "model.plan.json"
    meta = json.loads(meta_path.read_text())
    meta["precision"] = "fp16"
    meta_path.write_text(json.dumps(meta))
    assert engines.stale_reasons(repo, "unet_int8", _geometry("tiny"), A100) == ["precision changed (fp16 -> int8)"]


def test_failed_build_leaves_no_plan_that_looks_current(repo) -> None:
    _built(repo)
    (repo / "text_encoder" / "1" / "model.onnx").write_bytes(b"changed")
    with pytest.raises(EngineError, match="builder crashed"):
        _built(repo, FakeBackend(fail=True))
    assert "missing metadata" in engines.check_engines(repo, ["text_encoder"], A100)["text_encoder"][0]


def test_missing_onnx_or_geometry_says_export_first(repo) -> None:
    (repo / "kv_projector" / "1" / "model.onnx").unlink()
    with pytest.raises(EngineError, match="export"):
        _built(repo)
    (repo / "scheduler" / "1" / GEOMETRY_FILE).unlink()
    with pytest.raises(EngineError, match="export"):
        engines.check_engines(repo, ENGINE_SLOTS, A100)


def test_refusal_message_names_plans_reasons_and_rebuild(repo) -> None:
    _built(repo)
    stale = engines.check_engines(repo, ENGINE_SLOTS, replace(A100, tensorrt_version="10.6.0"))
    message = engines.refusal_message(repo, stale)
    assert "refusing to serve stale TensorRT plans" in message
    for slot in ENGINE_SLOTS:
        assert f"{slot}: built for TensorRT 10.5.0, running 10.6.0" in message
    assert (
        "python build/build_engines.py --rebuild" in message and "docker compose run --rm engines --rebuild" in message
    )


# --------------------------------------------------------------------------------------------------
# build/build_engines.py (engines_cli.main) with injected backend and exec
# --------------------------------------------------------------------------------------------------
def _main(
    repo: Path, *argv: str, backend: FakeBackend | None = None, unavailable: bool = False, driver: str | None = "580.65.06"
):
    lines: list[str] = []
    execs: list[list[str]] = []

    def loader():
        if unavailable:
            raise TensorRTUnavailable("TensorRT is not importable here (test)")
        return backend or FakeBackend()

    code = engines_cli.main(
        ["--repository", str(repo), "--timing-cache", str(repo / "t.cache"), *argv],
        loader,
        execs.append,
        lines.append,
        driver_query=lambda: driver,
    )
    return code, "\n".join(lines), execs


def test_cli_builds_then_skips(repo) -> None:
    backend = FakeBackend()
    code, out, _ = _main(repo, "--opt-level", "5", "--workspace-gb", "2", backend=backend)
    assert code == 0 and len(backend.jobs) == len(ENGINE_SLOTS)
    assert backend.jobs[0].settings == BuilderSettings(5, 2 * 2**30, str(repo / "t.cache"))
    code, out, _ = _main(repo, "--slots", "unet,vae_decoder", backend=backend)
    assert code == 0 and len(backend.jobs) == len(ENGINE_SLOTS) and "unet: up to date" in out and "0 plan(s) built" in out


def test_cli_check_execs_the_server_only_when_fresh(repo) -> None:
    _built(repo)
    code, out, execs = _main(repo, "--check", "--", "tritonserver", "--model-repository=/models")
    assert code == 0 and execs == [["tritonserver", "--model-repository=/models"]]
    code, out, execs = _main(
        repo,
        "--check",
        "--",
        "tritonserver",
        backend=FakeBackend(replace(A100, gpu_name="NVIDIA L4", compute_capability="8.9")),
    )
    assert code == engines_cli.EXIT_STALE and execs == []
    assert "built for GPU NVIDIA A100-SXM4-80GB sm_80, this is NVIDIA L4 sm_89" in out and "--rebuild" in out


def test_cli_check_refuses_an_old_driver_or_an_empty_admin_key_first(repo) -> None:
    """Before TensorRT is loaded or the plans are read: fresh plans do not let such a host serve."""
    _built(repo)
    serve = ["--check", "--", "tritonserver", "--grpc-restricted-protocol=model-repository:triton-admin-key=k"]
    code, out, execs = _main(repo, *serve, driver="550.54.15\n580.65.06\n", unavailable=True)
    assert code == engines_cli.EXIT_HOST and execs == [] and "NVIDIA driver 550.54.15 is too old" in out and "R580" in out
    empty_key = "--http-restricted-api=model-repository:triton-admin-key="
    code, out, execs = _main(repo, *serve[:-1], empty_key, unavailable=True)
    assert code == engines_cli.EXIT_HOST and execs == [] and "TRITON_ADMIN_KEY is not set" in out
    code, out, execs = _main(repo, *serve, driver=None)  # no nvidia-smi: not judged, the plans decide
    assert code == 0 and len(execs) == 1 and "not checked" in out
    code, out, execs = _main(repo, *serve)
    assert code == 0 and execs == [serve[2:]] and "NVIDIA driver 580.65.06: runs CUDA 13" in out


def test_cli_without_tensorrt(repo) -> None:
    code, out, _ = _main(repo, unavailable=True)
    assert code == engines_cli.EXIT_NO_TENSORRT and "not importable" in out
    code, out, execs = _main(repo, "--check", "--", "tritonserver", unavailable=True)  # nothing built: stale anyway
    assert code == engines_cli.EXIT_STALE and "missing (" in out and execs == []
    _built(repo)
    code, out, execs = _main(repo, "--check", "--", "tritonserver", unavailable=True)
    assert code == engines_cli.EXIT_NO_TENSORRT and "cannot verify" in out and execs == []


class NoGpuBackend(FakeBackend):
    def runtime_info(self) -> RuntimeInfo:
        raise TensorRTUnavailable("no CUDA driver (libcuda.so.1)")


def test_cli_without_a_gpu(repo) -> None:
    code, out, _ = _main(repo, "--rebuild", backend=NoGpuBackend())
    assert code == engines_cli.EXIT_NO_TENSORRT and "no CUDA driver" in out


def test_cli_rejects_a_command_without_check(repo) -> None:
    with pytest.raises(SystemExit):
        _main(repo, "--", "tritonserver")


def test_tensorrt_builder_import_fails_clearly_without_tensorrt() -> None:
    spec = importlib.util.find_spec("tensorrt")
    if spec is not None and spec.origin is not None:
        pytest.skip("a real tensorrt is installed here")
    with pytest.raises(ImportError):
        importlib.import_module("t2vserve.tensorrt_builder")
    with pytest.raises(TensorRTUnavailable, match="not importable"):
        engines_cli.tensorrt_backend()


# --------------------------------------------------------------------------------------------------
# Export step of the compose engines service
# --------------------------------------------------------------------------------------------------
def test_export_is_skipped_only_for_the_same_source(repo, tmp_path) -> None:
    weights = tmp_path / "weights"
    assert engines_cli.export_source(weights) == {"source": "tiny"}  # no model there: the tiny model
    (weights / "unet").mkdir(parents=True)
    (weights / "model_index.json").write_text("{}")
    (weights / "unet" / "config.json").write_text('{"in_channels": 4}')
    source = engines_cli.export_source(weights)
    assert source["source"] == "weights"
    marker = repo / "scheduler" / "1" / engines_cli.EXPORT_SOURCE_FILE
    marker.write_text(json.dumps(source))
    assert engines_cli.export_is_current(repo, source)
    lines: list[str] = []
    engines_cli.export_if_needed(repo, weights, None, False, lines.append)
    assert "already in" in lines[0] and "skipped" in lines[0]
    optional = UNET3D.present_components(_geometry("tiny"))  # the fixture's model has a distilled student
    assert stale_files(repo, "unet3d", 1, optional) == []  # the generated configs were written (refreshed) all the same
    (weights / "unet" / "config.json").write_text('{"in_channels": 8}')
    assert not engines_cli.export_is_current(repo, engines_cli.export_source(weights))
    assert not engines_cli.export_is_current(repo, {"source": "tiny"})


def test_a_reused_export_keeps_the_tracks_and_batcher_delay_it_was_deployed_with(repo, tmp_path) -> None:
    """The engines service rewrites the configs of an export it reuses: with the tracks the export was told to serve
    (export --tracks, recorded in deployment.json) and the delay set since (batcher_delay), not every track at the
    generated delay."""
    optional = UNET3D.present_components(_geometry("tiny"))
    (repo / "scheduler" / "1" / engines_cli.EXPORT_SOURCE_FILE).write_text(json.dumps({"source": "tiny"}))  # an export of the tiny model
    for rel, text in render_repository("unet3d", 1, optional, ["fp16"]).items():  # as `export --tracks fp16` wrote them
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    write_deployment(repo, ["fp16"])
    set_queue_delay(repo, 0)  # python -m t2vserve.batcher_delay --denoiser-queue-delay-us 0
    lines: list[str] = []
    engines_cli.export_if_needed(repo, None, None, False, lines.append)
    assert "skipped" in lines[0] and "kept tracks fp16, batcher delay 0 us" in lines[0]
    assert deployed_tracks(repo) == ["fp16"] and current_queue_delay(repo) == 0
    unserved = (repo / "unet_fp8" / "config.pbtxt").read_text()
    assert "this deployment serves the tracks fp16 only" in unserved
    set_queue_delay(repo, DENOISER_QUEUE_DELAY_US)  # apart from the delay, the files are those of export --tracks fp16
    assert [rel for rel, text in render_repository("unet3d", 1, optional, ["fp16"]).items() if (repo / rel).read_text() != text] == []
    write_deployment(repo, None)  # an export serving every track: the rewrite serves them all again
    engines_cli.export_if_needed(repo, None, None, False, lines.append)
    assert stale_files(repo, "unet3d", 1, optional) == [] and "kept tracks all" in lines[1]

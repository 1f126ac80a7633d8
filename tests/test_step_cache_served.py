"""Step caching served (unet3d, the session's tritonserver): fewer UNet executions, counted by the metrics, a close clip."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tritonclient.utils import InferenceServerException

from t2vserve.client import GenerationRequest, GenerationResult, Progress, T2VClient
from t2vserve.quality.metrics import clip_metrics
from t2vserve.spec import STEP_CACHE_RANGE, STREAM_MODEL
from t2vserve.train.world import DEMO_PROMPT

#: The demo's request on the full-precision UNet (the preset's 10 steps), with the step cache at THRESHOLD.
REQUEST = GenerationRequest(DEMO_PROMPT, seed=7, precision="fp16")
THRESHOLD = 0.2
#: Cached vs uncached clip, uint8 PSNR: measured 45.0 to 49.5 dB at 0.2 on 24 clips of the sweep
#: (docs/bench/step-cache-sweep.md); this clip 47.5 dB.
MIN_PSNR_DB = 40.0


@pytest.fixture(scope="module")
def uncached(server, grpc_client, measure_steps) -> GenerationResult:
    result, calls, steps, skipped = measure_steps(server, lambda: grpc_client.generate(REQUEST), "scheduler", "unet")
    assert calls == steps == 10 and skipped == 0  # off by default: one UNet execution per step
    return result


def test_cached_clip_skips_unet_executions_that_the_metrics_count(server, grpc_client, uncached, measure_steps) -> None:
    generate = lambda request: lambda: grpc_client.generate(request)  # noqa: E731
    cached, calls, steps, skipped = measure_steps(server, generate(replace(REQUEST, step_cache=THRESHOLD)), "scheduler", "unet")
    assert steps == 10 and 0 < skipped and calls == steps - skipped < steps
    assert clip_metrics(uncached.video, cached.video)["psnr_db"] >= MIN_PSNR_DB
    explicit_off, calls_off, _, skipped_off = measure_steps(server, generate(replace(REQUEST, step_cache=0.0)), "scheduler", "unet")
    assert calls_off == 10 and skipped_off == 0 and (explicit_off.video == uncached.video).all()


def test_stream_reports_the_cached_steps_and_gives_the_ensembles_clip(server, grpc_client, measure_steps) -> None:
    request = replace(REQUEST, step_cache=THRESHOLD)
    ensemble = grpc_client.generate(request)
    events, calls, steps, skipped = measure_steps(server, lambda: list(grpc_client.stream(request)), STREAM_MODEL, "unet")
    progress = [e for e in events if isinstance(e, Progress)]
    cached = [p.step for p in progress if p.cached]
    assert len(progress) == steps == 10 and len(cached) == skipped > 0 and calls == steps - skipped
    assert progress[0].cached is progress[1].cached is progress[-1].cached is False  # always computed
    assert (events[-1].video == ensemble.video).all()  # the same loop, the same skips


@pytest.mark.parametrize("value", [-0.5, 1.5])
def test_bad_step_cache_is_invalid_arg_naming_it(server, grpc_client, value: float) -> None:
    for call in (grpc_client.generate, lambda r: list(grpc_client.stream(r))):
        with pytest.raises(InferenceServerException) as info:
            call(replace(REQUEST, steps=1, step_cache=value))
        assert f"STEP_CACHE: {value!r} is out of range; allowed {STEP_CACHE_RANGE.describe()}" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        grpc_client.generate(replace(REQUEST, steps=1, step_cache=value))
    assert str(info.value.status()) == "StatusCode.INVALID_ARGUMENT"
    with T2VClient(server.http_url, "http") as http:  # HTTP 400, and the server keeps serving
        with pytest.raises(InferenceServerException) as info:
            http.generate(replace(REQUEST, steps=1, step_cache=value))
        assert str(info.value.status()) == "400"
        assert http.generate(replace(REQUEST, steps=1)).video.shape[0] == 8

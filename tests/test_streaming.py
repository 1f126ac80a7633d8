"""``t2v_stream`` on the session's real tritonserver: progress per step, previews, cancellation and time limits."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from t2vserve.client import GenerationRequest, GenerationResult, Progress, T2VClient
from t2vserve.previews import pooled_frames
from t2vserve.repository import render_repository
from t2vserve.spec import MAX_TIME_LIMIT_S, PARAMETERS, PRESETS, PROMPT_MAX_CHARS, STREAM_MODEL, STREAM_PARAMETERS
from t2vserve.train.world import DEMO_PROMPT
from t2vserve.video import decode_mp4

STEPS, PREVIEW_EVERY = 4, 2
REQUEST = GenerationRequest(DEMO_PROMPT, seed=11, steps=STEPS)
#: The preview of the final latents against the decoded middle frame pooled to latent resolution
#: (uint8 levels): at most this far apart on average, and correlated at least this much.
PREVIEW_MEAN_LEVELS = 30.0
PREVIEW_CORRELATION = 0.5


@pytest.fixture(scope="module")
def reference(grpc_client) -> GenerationResult:
    """REQUEST through the non-streaming ``t2v`` ensemble."""
    return grpc_client.generate(REQUEST)


def request_count(url: str, model: str) -> int:
    """Requests ``model`` has completed so far (Triton's inference statistics)."""
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats["inference_stats"]["success"].get("count", 0))


def progress_of(events: list) -> list[Progress]:
    assert isinstance(events[-1], GenerationResult) and all(isinstance(e, Progress) for e in events[:-1])
    return events[:-1]


def test_stream_entry_is_decoupled_with_the_ensembles_inputs() -> None:
    config = render_repository()[f"{STREAM_MODEL}/config.pbtxt"]
    assert "model_transaction_policy { decoupled: true }" in config
    for param in PARAMETERS + STREAM_PARAMETERS:
        assert f'name: "{param.name}" data_type: {param.triton_dtype} dims: [ 1 ] optional: true' in config


def test_grpc_stream_reports_every_step_previews_and_the_ensembles_clip(grpc_client, reference, geometry) -> None:
    events = list(grpc_client.stream(replace(REQUEST, preview_every=PREVIEW_EVERY)))
    progress = progress_of(events)
    assert [p.step for p in progress] == list(range(1, STEPS + 1))
    assert all(p.total == STEPS for p in progress)
    elapsed = [p.elapsed_s for p in progress]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    assert all(p.remaining_s >= 0 for p in progress) and progress[-1].remaining_s == 0
    preset = PRESETS[geometry.preset]
    _, _, _, h, w = geometry.latent_shape(preset.height, preset.width, preset.num_frames)
    previews = {p.step: p.preview for p in progress if p.preview is not None}
    assert sorted(previews) == list(range(PREVIEW_EVERY, STEPS + 1, PREVIEW_EVERY))
    assert all(p.dtype == np.uint8 and p.shape == (h, w, 3) for p in previews.values())
    result = events[-1]
    np.testing.assert_array_equal(result.video, reference.video)  # the same loop and stages: bit for bit
    assert result.seed == reference.seed == 11

    # the preview decoder against the real VAE decode: the final latents' preview vs the clip's middle frame
    frames = torch.from_numpy(result.video.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1
    target = (pooled_frames(frames, geometry)[geometry.latent_frames(len(frames)) // 2].numpy() + 1) * 127.5
    preview = previews[STEPS].astype(np.float64)
    assert np.abs(preview - target).mean() < PREVIEW_MEAN_LEVELS
    assert np.corrcoef(preview.reshape(-1), target.reshape(-1))[0, 1] > PREVIEW_CORRELATION


def test_one_stream_instance_serves_requests_at_the_same_time(server, reference) -> None:
    """Worker threads of the one t2v_stream instance: a second stream runs while the first is denoising."""
    requests = [REQUEST, replace(REQUEST, seed=12)]

    def timed(request: GenerationRequest) -> tuple[float, float, np.ndarray]:
        """(first progress, end, clip) of one stream, in time.monotonic() seconds."""
        with T2VClient(server.grpc_url) as client:
            events = [(time.monotonic(), event) for event in client.stream(request)]
        return events[0][0], events[-1][0], events[-1][1].video

    with ThreadPoolExecutor(len(requests)) as pool:
        (first_a, end_a, clip_a), (first_b, end_b, clip_b) = pool.map(timed, requests)
    assert max(first_a, first_b) < min(end_a, end_b)  # both were denoising at once
    np.testing.assert_array_equal(clip_a, reference.video)
    assert not np.array_equal(clip_b, clip_a)


def test_http_generate_stream_sends_progress_as_server_sent_events(server, reference) -> None:
    with T2VClient(server.http_url, "http") as client:
        events = list(client.stream(REQUEST))
    assert [(p.step, p.total) for p in progress_of(events)] == [(s, STEPS) for s in range(1, STEPS + 1)]
    np.testing.assert_array_equal(events[-1].video, reference.video)
    # RETURN_FRAMES false: the final event's VIDEO has no frames, its MP4 all of them
    with T2VClient(server.http_url, "http") as client:
        final = list(client.stream(replace(REQUEST, return_frames=False)))[-1]
    assert final.video.shape == (0, *reference.video.shape[1:]) and decode_mp4(final.mp4)[0].shape == reference.video.shape


def test_cancelled_stream_stops_the_denoiser_at_the_next_step(server, grpc_client, geometry) -> None:
    denoiser = geometry.tracks[geometry.default_precision][0]
    steps, before = 50, request_count(server.grpc_url, denoiser)
    events = grpc_client.stream(GenerationRequest(DEMO_PROMPT, seed=3, steps=steps))
    for event in events:
        if event.step == 2:
            break
    events.close()  # stops the gRPC stream, cancelling the request
    time.sleep(1.0)
    stopped = request_count(server.grpc_url, denoiser) - before
    time.sleep(1.5)
    assert 2 <= stopped <= 4 < steps  # the server may have begun a step or two while the cancellation travelled
    assert request_count(server.grpc_url, denoiser) - before == stopped  # and nothing after it
    # and the stream entry takes new requests
    assert isinstance(list(grpc_client.stream(GenerationRequest(DEMO_PROMPT, seed=3, steps=1)))[-1], GenerationResult)


def test_time_limit_ends_the_request_with_an_error_naming_it(server, grpc_client, geometry) -> None:
    late = GenerationRequest(DEMO_PROMPT, seed=5, steps=50, time_limit_s=1.0)
    message = r"TIME_LIMIT_S: the request ran past its time limit of 1 s and was stopped after \d+ of 50 denoising steps"
    with pytest.raises(InferenceServerException, match=message):
        list(grpc_client.stream(late))
    with pytest.raises(InferenceServerException, match=message) as ensemble:
        grpc_client.generate(late)
    assert ensemble.value.status() == "StatusCode.UNAVAILABLE"
    clip = grpc_client.generate(GenerationRequest(DEMO_PROMPT, seed=5, steps=1))  # still serving
    assert clip.video.shape[0] == PRESETS[geometry.preset].num_frames


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("preview_every", 101, "PREVIEW_EVERY: 101 is out of range; allowed [0, 100]"),
        ("time_limit_s", 0.0, "TIME_LIMIT_S: 0.0 is out of range; allowed [0.1, 3600]"),
        ("time_limit_s", MAX_TIME_LIMIT_S + 1, "TIME_LIMIT_S: 3601.0 is out of range; allowed [0.1, 3600]"),
        ("steps", 500, "STEPS: 500 is out of range; allowed [1, 100]"),
        ("prompt", None, f"PROMPT: is required; allowed 1..{PROMPT_MAX_CHARS} characters"),  # no PROMPT at all
    ],
)
def test_bad_parameters_of_a_stream_are_invalid_arg(server, grpc_client, field, value, message) -> None:
    request = GenerationRequest(**{"prompt": DEMO_PROMPT, field: value})
    with pytest.raises(InferenceServerException) as grpc_error:  # gRPC stream errors carry the message, no code
        list(grpc_client.stream(request))
    assert grpc_error.value.message() == message
    if field == "preview_every":
        return  # an input of t2v_stream only (and refused by the HTTP client: previews stream over gRPC)
    with T2VClient(server.http_url, "http") as client, pytest.raises(InferenceServerException) as http_error:
        list(client.stream(request))
    assert http_error.value.message() == message and http_error.value.status() == "400"
    with pytest.raises(InferenceServerException, match=message.replace("[", r"\[")) as ensemble_error:
        grpc_client.generate(request)
    assert ensemble_error.value.status() == "StatusCode.INVALID_ARGUMENT"

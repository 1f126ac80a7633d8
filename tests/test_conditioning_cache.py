"""The shared conditioning cache: LRU by bytes with pinned entries, and served: hits skip the text side, same clip."""

from __future__ import annotations

import re
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from t2vserve.client import GenerationRequest, T2VClient
from t2vserve.conditioning_cache import BUDGET_METRIC, METRICS, RESPONSE_METRICS, ConditioningCache
from t2vserve.demo import stage_times
from t2vserve.server import EmbeddedTritonServer
from t2vserve.spec import CONDITIONING_CACHE_BYTES, INPUT_IDS, KV, SCHEDULER_INSTANCES, TEXT_EMBEDS


def _cache(max_bytes: int) -> ConditioningCache[bytes]:
    return ConditioningCache(max_bytes, len)


def test_lru_within_the_byte_budget() -> None:
    cache = _cache(10)
    assert cache.put("a", b"aaaa") and cache.put("b", b"bbbb")
    assert cache.get("a") == b"aaaa"  # a is now the most recently used
    assert cache.put("c", b"cccc")  # 12 bytes > 10: b goes
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.get("b") is None
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.evictions, stats.entries, stats.bytes) == (1, 1, 1, 2, 8)
    assert cache.put("a", b"a") and cache.stats.bytes == 5 and cache.stats.entries == 2  # replaced, not added


def test_pinned_entries_stay_and_oversize_entries_are_not_kept() -> None:
    cache = _cache(10)
    assert cache.put("negative", b"nnnnnn", pinned=True)
    assert cache.put("x", b"xxxx") and cache.put("y", b"yyyy")  # x evicted, never the pinned entry
    assert "negative" in cache and cache.is_pinned("negative") and "x" not in cache and "y" in cache
    assert not cache.put("big", b"b" * 5)  # 6 pinned + 5 > 10: cannot fit whatever is evicted
    assert "big" not in cache and "y" in cache
    off = _cache(0)
    assert not off.put("a", b"a") and off.get("a") is None and off.stats.bytes == 0
    with pytest.raises(ValueError):
        _cache(-1)


def _scrape(server) -> dict[str, float]:
    """The conditioning cache's metrics (summed over label sets) from Triton's metrics endpoint."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    names = [name for name, _, _ in METRICS.values()] + [BUDGET_METRIC[0]]
    values = {}
    for name in names:
        samples = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        assert samples, f"{name} is not on {server.metrics_url}"
        values[name] = sum(float(v) for v in samples)
    return values


def _delta(after: dict[str, float], before: dict[str, float], field: str) -> float:
    name = METRICS[field][0]
    return after[name] - before[name]


def test_second_identical_prompt_skips_the_text_side_and_gives_the_same_clip(server, grpc_client, geometry) -> None:
    request = GenerationRequest("a green square sliding down slowly", negative_prompt="a grey blur", seed=3, steps=2, num_frames=2)
    stages, metrics = stage_times(server.grpc_url), _scrape(server)
    first = grpc_client.generate(request)  # both texts new: one text_encoder + one kv_projector call
    stages_1, metrics_1 = stage_times(server.grpc_url), _scrape(server)
    second = grpc_client.generate(request)  # both cached
    stages_2, metrics_2 = stage_times(server.grpc_url), _scrape(server)
    other_seed = grpc_client.generate(GenerationRequest(request.prompt, negative_prompt="a grey blur", seed=4, steps=2, num_frames=2))
    stages_3 = stage_times(server.grpc_url)
    for entry in ("text_encoder", "kv_projector"):
        assert stages_1[entry][0] - stages[entry][0] == 1
        assert stages_3[entry][0] == stages_1[entry][0], f"{entry} ran on a cache hit"
    np.testing.assert_array_equal(first.video, second.video)
    assert not np.array_equal(first.video, other_seed.video)
    assert (_delta(metrics_1, metrics, "misses"), _delta(metrics_1, metrics, "hits")) == (2, 0)
    assert (_delta(metrics_2, metrics_1, "misses"), _delta(metrics_2, metrics_1, "hits")) == (0, 2)
    row_bytes = geometry.text_max_length * geometry.kv_layout.width * 4
    assert metrics_2[METRICS["bytes"][0]] == metrics_2[METRICS["entries"][0]] * row_bytes > 0
    assert metrics_2[BUDGET_METRIC[0]] == CONDITIONING_CACHE_BYTES


def test_default_negative_prompt_is_computed_once(server, grpc_client) -> None:
    """After any request with the default negative prompt, a new prompt costs one text_encoder call and one miss."""
    grpc_client.generate(GenerationRequest("a yellow star", seed=1, steps=1, num_frames=1))
    stages, metrics = stage_times(server.grpc_url), _scrape(server)
    grpc_client.generate(GenerationRequest("a purple triangle spinning", seed=1, steps=1, num_frames=1))
    after, metrics_after = stage_times(server.grpc_url), _scrape(server)
    assert after["text_encoder"][0] - stages["text_encoder"][0] == 1
    assert (_delta(metrics_after, metrics, "misses"), _delta(metrics_after, metrics, "hits")) == (1, 1)


def test_a_texts_kv_does_not_depend_on_its_batch_partner(server, geometry) -> None:
    """Why a cached row equals a freshly computed one: the engines work row by row ([N, P] vs [P, P], bit for bit)."""
    prompt, negative = np.arange(geometry.text_max_length) % 50 + 1, np.full(geometry.text_max_length, 3)

    def kv(rows: list[np.ndarray]) -> np.ndarray:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            ids = grpcclient.InferInput(INPUT_IDS, [len(rows), geometry.text_max_length], "INT64")
            ids.set_data_from_numpy(np.stack(rows).astype(np.int64))
            embeds = client.infer("text_encoder", [ids]).as_numpy(TEXT_EMBEDS)
            text = grpcclient.InferInput(TEXT_EMBEDS, list(embeds.shape), "FP32")
            text.set_data_from_numpy(embeds)
            return client.infer("kv_projector", [text]).as_numpy(KV)

    np.testing.assert_array_equal(kv([negative, prompt])[1], kv([prompt, prompt])[0])


def _scrape_responses(server) -> dict[str, float]:
    """The scheduler instances' response-cache metrics, summed over instances."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    values = {}
    for field, (name, _, _) in RESPONSE_METRICS.items():
        samples = re.findall(rf"^{name}{{[^}}]*instance=[^}}]*}} (\S+)$", text, re.M)
        assert samples, f"{name} (label instance) is not on {server.metrics_url}"
        values[field] = sum(float(v) for v in samples)
    return values


@pytest.fixture(scope="module")
def response_cache_server(repository, tmp_path_factory):
    """A copy of the repository whose scheduler keeps a response cache (off by default), on its own server."""
    root = tmp_path_factory.mktemp("response-cache")
    copy = Path(shutil.copytree(repository, root / "model_repository", symlinks=True))
    configs = [copy / "scheduler" / "config.pbtxt", *(copy / "scheduler" / "configs").glob("*.pbtxt")]  # whichever set serves
    for config in configs:
        text = config.read_text()
        assert 'key: "response_cache_bytes" value: { string_value: "0" }' in text
        config.write_text(text.replace('key: "response_cache_bytes" value: { string_value: "0" }', 'key: "response_cache_bytes" value: { string_value: "16777216" }'))
    with EmbeddedTritonServer(copy, log_path=root / "tritonserver.log") as srv:
        yield srv


def test_identical_request_with_a_seed_is_answered_without_denoising(response_cache_server, geometry) -> None:
    """The response cache (turned on): repeats of a request with an explicit SEED return the same clip, and once an
    instance holds it, without a denoiser call (at most one miss per scheduler instance); requests without a
    SEED always denoise (a new seed each)."""
    server = response_cache_server
    with T2VClient(server.grpc_url) as grpc_client:
        denoiser = geometry.tracks[geometry.default_precision][0]
        request = GenerationRequest("a red circle sliding to the right", seed=41, steps=2, num_frames=2)
        repeats = SCHEDULER_INSTANCES + 1
        before, metrics = stage_times(server.grpc_url), _scrape_responses(server)
        clips = [grpc_client.generate(request) for _ in range(repeats)]
        after, metrics_after = stage_times(server.grpc_url), _scrape_responses(server)
        for clip in clips[1:]:
            np.testing.assert_array_equal(clip.video, clips[0].video)
        hits, misses = metrics_after["hits"] - metrics["hits"], metrics_after["misses"] - metrics["misses"]
        assert hits + misses == repeats and 1 <= misses <= SCHEDULER_INSTANCES and hits >= 1
        denoised = after[denoiser][0] - before[denoiser][0]
        assert denoised == misses * request.steps, "a cache hit ran denoising steps"
        assert metrics_after["entries"] >= 1 and metrics_after["bytes"] > 0
        unseeded = GenerationRequest(request.prompt, steps=2, num_frames=2)
        first, second = grpc_client.generate(unseeded), grpc_client.generate(unseeded)
        final, metrics_final = stage_times(server.grpc_url), _scrape_responses(server)
        assert final[denoiser][0] - after[denoiser][0] == 2 * unseeded.steps
        assert (metrics_final["hits"], metrics_final["misses"]) == (metrics_after["hits"], metrics_after["misses"])
        assert first.seed != second.seed and not np.array_equal(first.video, second.video)
        assert metrics_final["entries"] <= SCHEDULER_INSTANCES


def test_response_cache_is_off_by_default(server, grpc_client, geometry) -> None:
    """The shipped configuration: a repeated seeded request is denoised again (load tests measure real work)."""
    denoiser = geometry.tracks[geometry.default_precision][0]
    request = GenerationRequest("a blue square growing", seed=43, steps=2, num_frames=2)
    grpc_client.generate(request)
    before = stage_times(server.grpc_url)
    grpc_client.generate(request)
    assert stage_times(server.grpc_url)[denoiser][0] - before[denoiser][0] == request.steps
    assert sum(_scrape_responses(server)[field] for field in ("hits", "entries")) == 0

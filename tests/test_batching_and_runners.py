"""Dynamic batching at the UNet across concurrent requests, and the torch runner in the same repository."""

from __future__ import annotations

import logging
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from t2vserve.bench.split_batches import BACK_TO_BACK_S, Execution, back_to_back_s, executions, own_call_gap_s, split_pairs
from t2vserve.client import GenerationRequest, T2VClient
from t2vserve.runners import batch_or_each
from t2vserve.server import EmbeddedTritonServer
from t2vserve.step_barrier import BARRIER_METRICS
from t2vserve.step_cache import read_step_metrics
from t2vserve.spec import DENOISER_MAX_BATCH, POSTPROCESS_INSTANCES, SCHEDULER_INSTANCES, STREAM_MODEL
from t2vserve.triton_models.stage_timing import STAGE_TIMING_ENV, StageTimer, parse_stage_lines

PROMPTS = ["a cat playing the piano", "a drone shot over snowy mountains", "a chef cooking pasta", "fireworks over a river"]


def unet_stats(url: str, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of one model: fewer executions than inferences means batching."""
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def barrier_metrics(server) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return read_step_metrics(response.read().decode(), BARRIER_METRICS)


def test_concurrent_requests_are_batched_at_the_unet(server) -> None:
    """Four clients at once: the scheduler instances' step barrier (t2vserve.step_barrier) sends their calls together,
    so most UNet executions carry more than two requests; the waits show in the loop's metrics."""
    requests = [GenerationRequest(p, seed=i, steps=6, precision="fp16") for i, p in enumerate(PROMPTS)]
    with T2VClient(server.grpc_url) as client:
        alone = [client.generate(r).video for r in requests]
    before, waits_before = unet_stats(server.grpc_url, "unet"), barrier_metrics(server)

    def generate(request: GenerationRequest) -> np.ndarray:
        with T2VClient(server.grpc_url) as client:
            return client.generate(request).video

    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(generate, requests))
    after = unet_stats(server.grpc_url, "unet")
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == len(requests) * 6 * 2  # every step of every request, 2 samples (CFG pair) each
    assert executions < inferences / 4, f"little batching: {executions} executions for {inferences} samples"
    waits = barrier_metrics(server)
    assert waits["waits", "scheduler"] > waits_before.get(("waits", "scheduler"), 0.0)
    assert waits["waited_s", "scheduler"] > waits_before.get(("waited_s", "scheduler"), 0.0)
    for one, batched in zip(alone, together):  # batching changes nothing beyond float summation order
        diff = np.abs(one.astype(int) - batched.astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.05


@pytest.fixture(scope="module")
def torch_server(repository, tmp_path_factory):
    """The same repository with the engine slots filled by the torch runner (CPU here, fp32)."""
    log = tmp_path_factory.mktemp("torch-server") / "tritonserver.log"
    os.environ[STAGE_TIMING_ENV] = "1"  # the stubs log each execution's stages (test_stage_timing...)
    try:
        server = EmbeddedTritonServer(repository, runner="torch", log_path=log).start()
    finally:
        del os.environ[STAGE_TIMING_ENV]
    try:
        yield server
    finally:
        server.stop()


def test_torch_runner_serves_the_same_clip(server, torch_server) -> None:
    request = GenerationRequest(PROMPTS[0], seed=3, steps=5, precision="fp16")
    with T2VClient(server.grpc_url) as onnx_client, T2VClient(torch_server.grpc_url) as torch_client:
        onnx_video = onnx_client.generate(request).video
        torch_video = torch_client.generate(request).video
    diff = np.abs(onnx_video.astype(int) - torch_video.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05
    assert unet_stats(torch_server.grpc_url, "unet")[0] == 10


def test_stage_timing_splits_each_stub_s_time(torch_server) -> None:
    """T2V_STAGE_TIMING (the bench's stage split): each runner execution logs its inputs / run / outputs, the sampling
    loop per request its BLS calls and its own work (the sampler's update, the call's inputs), postprocess per clip its
    check and encode; a step's BLS call contains the denoiser's whole execution."""
    offset = torch_server.log_path.stat().st_size
    with T2VClient(torch_server.grpc_url) as client:
        clip = client.generate(GenerationRequest(PROMPTS[1], seed=4, steps=3, precision="fp16"))
    time.sleep(0.5)  # the stubs' log lines reach the server log
    with torch_server.log_path.open() as log:
        log.seek(offset)
        stages = parse_stage_lines(log.read())
    unet, loop = stages["unet"], stages["scheduler"]
    assert (unet["records"], unet["batch"]) == (3, 2) and (loop["records"], loop["steps"]) == (1, 3)
    assert {"inputs", "run", "outputs"} <= set(unet) and {"update", "inputs", "bls"} <= set(loop)
    assert loop["bls"] >= 3 * (unet["inputs"] + unet["run"] + unet["outputs"])
    assert unet["run"] > unet["inputs"] and stages["vae_decoder"]["records"] == 1
    post = stages["postprocess"]
    assert (post["records"], post["frames"]) == (1, len(clip.video)) and post["encode"] > post["inputs"] + post["outputs"]


def test_stage_timing_with_a_switch_file_times_records_only_while_it_exists(monkeypatch, tmp_path) -> None:
    """T2V_STAGE_TIMING=<path>: the bench times one server with and without the marks' CUDA synchronisations; a
    record is timed (synchronised, logged) only if the file exists when it starts."""
    switch = tmp_path / "stage-timing.on"
    monkeypatch.setenv(STAGE_TIMING_ENV, str(switch))
    lines, syncs = [], []
    timer = StageTimer("unet", lines.append, lambda: syncs.append(1))

    def record() -> None:
        timer.start()
        timer.mark("run")
        timer.finish(batch=2)

    record()
    assert lines == [] and syncs == []
    switch.touch()
    record()
    assert len(lines) == 1 and len(syncs) == 2 and parse_stage_lines(f'I1207 00:00:00.000 1 x] "{lines[0]}"')["unet"]["batch"] == 2
    switch.unlink()
    record()
    assert len(lines) == 1 and len(syncs) == 2


def test_the_server_log_gives_each_denoiser_execution_its_batch_and_time(torch_server) -> None:
    """bench.split_batches reads the UNet's executions back from the stubs' stage lines: as many as Triton counted,
    with the rows Triton counted, in order, each as long as its stages; four concurrent requests batch."""
    before, offset = unet_stats(torch_server.grpc_url, "unet"), torch_server.log_path.stat().st_size

    def generate(index: int) -> None:
        with T2VClient(torch_server.grpc_url) as client:
            client.generate(GenerationRequest(PROMPTS[index], seed=index, steps=4, precision="fp16"))

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        list(pool.map(generate, range(len(PROMPTS))))
    after = unet_stats(torch_server.grpc_url, "unet")
    time.sleep(0.5)  # the stubs' log lines reach the server log
    with torch_server.log_path.open() as log:
        log.seek(offset)
        runs = executions(log.read(), "unet")
    assert len(runs) == after[1] - before[1] and sum(r.batch for r in runs) == after[0] - before[0] == len(PROMPTS) * 4 * 2
    assert max(r.batch for r in runs) > 2 and all(0 < r.end_s - r.start_s < 60 for r in runs)
    assert all(a.end_s <= b.end_s for a, b in zip(runs, runs[1:]))


def test_split_pairs_are_back_to_back_executions_one_batch_could_hold() -> None:
    """b6 then b2 starting 1 ms after it, b4 then b4 1 ms after: split; b2 then b4 starting 5 ms after (a loop's own
    next call): not; b4 then b6, b6 then b4: too many rows for one execution of 8 (not of 16)."""
    runs = [Execution(0.0, 0.1, 6), Execution(0.101, 0.15, 2), Execution(0.155, 0.2, 4), Execution(0.201, 0.25, 4),
            Execution(0.251, 0.3, 6), Execution(0.3005, 0.35, 4)]
    assert split_pairs(runs, DENOISER_MAX_BATCH) == {(6, 2): 1, (4, 4): 1}
    assert split_pairs(runs, 16) == {(6, 2): 1, (4, 4): 1, (4, 6): 1, (6, 4): 1}
    # a lone loop calling again 1.6 ms after its previous call (a CPU server): the split gap shrinks to half of that
    lone = [Execution(0.01 * i, 0.01 * i + 0.0084 + 0.0002 * (i % 2), 2) for i in range(5)]
    assert own_call_gap_s(lone) == pytest.approx(0.0016) and back_to_back_s(own_call_gap_s(lone)) == pytest.approx(0.0008)
    assert back_to_back_s(None) == back_to_back_s(0.01) == BACK_TO_BACK_S and own_call_gap_s(lone[:1]) is None


def test_without_cuda_the_sampling_loops_are_cpu_instances(server, torch_server) -> None:
    """No GPU here: the torch runner is served from its CPU config set (configs/torch-cpu.pbtxt: Triton refuses KIND_GPU
    instances without a GPU), ONNX Runtime from its own; both run scheduler and t2v_stream as CPU instances, which
    follow their K/V (t2vserve.placement), and the clips' encodes as POSTPROCESS_INSTANCES instances."""
    assert (server.config_name(), torch_server.config_name()) == ("onnxruntime", "torch-cpu")
    for srv in (server, torch_server):
        with grpcclient.InferenceServerClient(srv.grpc_url) as client:
            groups = {model: client.get_model_config(model, as_json=True)["config"]["instance_group"]
                      for model in ("scheduler", STREAM_MODEL, "postprocess")}
        assert {model: [(g["kind"], g["count"]) for g in group] for model, group in groups.items()} == {
            "scheduler": [("KIND_CPU", SCHEDULER_INSTANCES)], STREAM_MODEL: [("KIND_CPU", 1)], "postprocess": [("KIND_CPU", POSTPROCESS_INSTANCES)]}
    log = torch_server.log_path.read_text()
    assert "scheduler_0_0: sampling loop on the device its K/V arrives on (CPU instance)" in log
    with grpcclient.InferenceServerClient(torch_server.grpc_url) as client:
        assert client.get_model_config("vae_decoder", as_json=True)["config"]["parameters"]["device"]["string_value"] == "cpu"


def test_a_failed_batch_is_logged_before_the_one_by_one_retry(caplog) -> None:
    """The runner model's fallback (triton_models/runner.py passes Triton's logger instead of logging's)."""

    def failing_batch(requests: list[str]) -> list[str]:
        raise RuntimeError("sizes do not concatenate")

    with caplog.at_level(logging.WARNING, logger="t2vserve.runners"):
        assert batch_or_each(["a", "b", "c"], failing_batch, str.upper) == ["A", "B", "C"]
    (record,) = caplog.records
    assert "batch of 3 requests failed; retrying them one by one" in record.getMessage()
    assert "Traceback" in record.getMessage() and "RuntimeError: sizes do not concatenate" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="t2vserve.runners"):
        assert batch_or_each(["a", "b"], lambda requests: ["batched"] * len(requests), str.upper) == ["batched"] * 2
        assert batch_or_each(["a"], failing_batch, str.upper) == ["A"]  # a single request is not a batch
    assert caplog.records == []


def test_torch_runner_compiles_each_batch_size_at_warm_up_and_pads_the_others() -> None:
    """The batcher forms batches 1 (guidance-free requests) to max_batch_size. One static graph per compiled size
    (CFG pairs by default: 2, 4, 6, 8; here 1, 2, 4, 8), all compiled before READY, the CFG pair first; a batch of another
    size runs padded to the next compiled size (no compile under load) and returns its own rows, equal to the
    module run on them alone."""
    import torch
    from torch._dynamo.testing import CompileCounter

    from t2vserve.families import get_family
    from t2vserve.runners import TorchRunner, compiled_batch_sizes
    from t2vserve.spec import DENOISER_MAX_BATCH, KV, NOISE_PRED, SAMPLE, TIMESTEP

    class Toy(torch.nn.Module):
        def forward(self, sample, timestep, kv):
            return sample * timestep.view(-1, 1, 1, 1, 1) + kv.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)

    assert compiled_batch_sizes(DENOISER_MAX_BATCH) == (2, 4, 6, 8) and compiled_batch_sizes(7) == (2, 4, 6, 7)
    assert compiled_batch_sizes(0) == () and compiled_batch_sizes(1) == (1,)
    assert compiled_batch_sizes(DENOISER_MAX_BATCH, request_batch=1) == (1, 2, 4, 8)  # a guidance-free entry (distilled)
    counter = CompileCounter()
    runner = TorchRunner.__new__(TorchRunner)  # the runner's state without a repository: a toy module, compiled
    runner.module, runner.device, runner.dtype, runner.max_batch = Toy(), torch.device("cpu"), torch.float32, DENOISER_MAX_BATCH
    runner.unavailable, runner.compiled_sizes, runner.request_batch = None, (1, 2, 4, 8), 2
    runner.forward = torch.compile(runner.module, backend=counter, dynamic=False)
    runner.slot, runner.input_names, runner.output_names = get_family("unet3d").slot("unet"), [SAMPLE, TIMESTEP, KV], [NOISE_PRED]
    values = {"channels": 4, "latent_frames": 2, "latent_height": 4, "latent_width": 4, "seq": 3, "kv_width": 8}
    runner.source = {"warmup_values": values, "vocab_size": 2}
    torch._dynamo.reset()
    assert list(runner.warm_up()) == [2, 1, 4, 8]
    assert counter.frame_count == 4
    for size in (1, 3, 2, 5, 7):  # what the batcher hands over later: no further compile
        inputs = runner.slot.example_inputs({**values, "batch": size}, 2)
        assert runner.padded_batch(size) == {1: 1, 2: 2, 3: 4, 5: 8, 7: 8}[size]
        output = runner.run(inputs)[NOISE_PRED]
        assert output.shape[0] == size
        torch.testing.assert_close(output, Toy()(*(inputs[name] for name in runner.input_names)))
    assert counter.frame_count == 4


def test_export_records_the_rows_one_request_sends_to_each_denoiser(repository, geometry) -> None:
    """source.json's request_batch: 1 for an entry whose track defaults to no guidance (the distilled student's
    batch-1 calls), 2 (the CFG pair) for the others; the torch runner compiles the batch sizes built from it."""
    import json

    from t2vserve.runners import SOURCE_FILE

    seen = {}
    for track, entries in geometry.tracks.items():
        guidance_free = geometry.defaults(precision=track)["GUIDANCE_SCALE"] <= 1.0
        for entry in entries:
            source = json.loads((repository / entry / "1" / SOURCE_FILE).read_text())
            assert source["request_batch"] == (1 if guidance_free else 2), (track, entry)
            seen[entry] = source["request_batch"]
    assert 2 in seen.values()


def test_runners_warm_up_at_the_preset_shape_or_the_size_given(geometry) -> None:
    """source.json's warm-up values: the preset's most frequent shape (TensorRT's opt) by default; a deployment or a
    benchmark serving another size (``export_model(warmup_size=...)``) gets that size, in pixels and latents."""
    from t2vserve.families import get_family

    family = get_family(geometry.family)
    preset, s = geometry.presets, geometry.vae_scale_factor
    default = family.warmup_values(geometry)
    assert default == {**{axis: e.opt for axis, e in family.extents(geometry).items()}, **family.constants(geometry)}
    assert (default["height"], default["width"], default["frames"]) == (preset.height, preset.width, preset.num_frames)
    other = family.warmup_values(geometry, 2 * s * 4, 3 * s * 4, 4)
    assert (other["latent_height"], other["latent_width"], other["latent_frames"]) == (8, 12, geometry.latent_frames(4))
    assert other["batch"] == default["batch"] and other["kv_width"] == default["kv_width"]


def test_compile_cache_warms_each_entry_at_each_batch_size_the_server_does(repository, tmp_path) -> None:
    """``python -m t2vserve.compile_cache``: one process per (entry, batch size) the server warms up (the denoisers'
    compiled sizes; one for an unbatched entry), each building the entry's runner from its config as Triton does."""
    from t2vserve.compile_cache import entry_sizes, fill
    from t2vserve.runners import compiled_batch_sizes
    from t2vserve.spec import DENOISER_MAX_BATCH

    assert entry_sizes(repository, "unet") == compiled_batch_sizes(DENOISER_MAX_BATCH) and entry_sizes(repository, "vae_decoder") == ()
    (result,) = fill(repository, ["vae_decoder"], log_dir=tmp_path)
    assert result["entry"] == "vae_decoder" and result["kernels"].startswith("torch") and "exit" not in result
    assert [p.name for p in tmp_path.iterdir()] == ["compile-cache-vae_decoder-b0.log"]


def test_the_compiled_batch_sizes_can_be_narrowed_for_a_latency_deployment(monkeypatch) -> None:
    """``T2V_COMPILED_BATCH_SIZES`` (settings) overrides every entry's ``compiled_batch_sizes``: a latency benchmark
    compiles one request's size only; a malformed value names the variable."""
    from t2vserve.settings import COMPILED_SIZES_ENV, compiled_batch_sizes_override

    monkeypatch.delenv(COMPILED_SIZES_ENV, raising=False)
    assert compiled_batch_sizes_override("2,4,6,8") == "2,4,6,8" and compiled_batch_sizes_override("") == ""
    monkeypatch.setenv(COMPILED_SIZES_ENV, "2")
    assert compiled_batch_sizes_override("2,4,6,8") == "2"
    monkeypatch.setenv(COMPILED_SIZES_ENV, "2,x")
    with pytest.raises(ValueError, match=COMPILED_SIZES_ENV):
        compiled_batch_sizes_override("")


def test_compile_guards_inputs_keeps_the_shape_guards_and_drops_the_module_s(monkeypatch) -> None:
    """``compile_guards`` inputs (``T2V_COMPILE_GUARDS``): a new batch size still gets its own graph, but a change to
    the module's own state is no longer checked on each call (the served module never changes after load); with
    ``all`` it is, and recompiles. A value outside the two names the variable."""
    import torch
    from torch._dynamo.testing import CompileCounter

    from t2vserve.runners import compile_module
    from t2vserve.settings import COMPILE_GUARDS_ENV, compile_guards

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = 2.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    for guards, stale in (("all", False), ("inputs", True)):
        torch._dynamo.reset()
        counter, module = CompileCounter(), Scaled()
        compiled = compile_module(module, "default", guards, backend=counter)
        for batch in (2, 4, 2):
            assert torch.equal(compiled(torch.ones(batch, 3)), torch.full((batch, 3), 2.0))
        assert counter.frame_count == 2  # one graph per batch size, both ways
        module.scale = 3.0
        expected = torch.full((2, 3), 2.0 if stale else 3.0)
        assert torch.equal(compiled(torch.ones(2, 3)), expected), guards
        assert counter.frame_count == (2 if stale else 3)
    monkeypatch.delenv(COMPILE_GUARDS_ENV, raising=False)
    assert compile_guards("") == "all" and compile_guards("inputs") == "inputs"
    monkeypatch.setenv(COMPILE_GUARDS_ENV, "inputs")
    assert compile_guards("all") == "inputs"
    monkeypatch.setenv(COMPILE_GUARDS_ENV, "none")
    with pytest.raises(ValueError, match=COMPILE_GUARDS_ENV):
        compile_guards("")

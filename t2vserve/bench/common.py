"""Benchmark helpers: timing, environment, Triton statistics, client load, and the runners in-process."""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..client import GenerationRequest, T2VClient
from ..families import get_family
from ..params import ResolvedRequest
from ..pipeline import Pipeline
from ..runners import make_runner
from ..geometry import GEOMETRY_FILE, ModelGeometry
from ..spec import FRAMES, MP4, POSTPROCESS_INSTANCES, VIDEO
from ..step_cache import StepCache
from ..video import encode_mp4

BENCH_PROMPT = "a red panda eating bamboo in a misty forest, cinematic"


def load_geometry(repository: Path) -> ModelGeometry:
    return ModelGeometry.load(repository / "scheduler" / "1" / GEOMETRY_FILE)


def _model_config_pb2() -> Any:
    """Triton's ModelConfig protobuf module (tritonclient's); read from its file where grpcio, which the package
    ``tritonclient.grpc`` imports first, is not installed (a bare GPU machine compiling caches in-process)."""
    import importlib.util

    try:
        from tritonclient.grpc import model_config_pb2

        return model_config_pb2
    except RuntimeError:  # "The installation does not include grpc support"
        package = importlib.util.find_spec("tritonclient")
        path = Path(next(iter(package.submodule_search_locations))) / "grpc" / "model_config_pb2.py"  # type: ignore[union-attr]
        spec = importlib.util.spec_from_file_location("t2vserve_model_config_pb2", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module


def runner_config(repository: Path, entry: str, runner: str) -> dict[str, Any]:
    """The model config Triton hands a Python-backend model (JSON of ``configs/<runner>.pbtxt``)."""
    from google.protobuf import json_format, text_format

    path = repository / entry / "configs" / f"{runner}.pbtxt"
    config = text_format.Parse(path.read_text(), _model_config_pb2().ModelConfig())
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


class RunnerPipeline(Pipeline):
    """prompt -> clip with a repository's runners in this process: the served computation minus Triton."""

    def __init__(self, repository: Path, runner: str, device: str, precision: str | None = None) -> None:
        geometry = load_geometry(repository)
        family = get_family(geometry.family)
        tracks = [precision] if precision else list(geometry.tracks)
        wanted = {entry for track in tracks for entry in geometry.tracks[track]}
        slots = [s for s in family.slots_of(geometry) if s.role != "denoiser" or s.name in wanted]
        configs = {s.name: runner_config(repository, s.name, runner) for s in slots}
        # the entry's own runner parameter: "unavailable" where this runner has no kernels for the track (int8 under torch)
        self.runners = {name: make_runner(config["parameters"]["runner"]["string_value"], repository / name / "1", config)
                        for name, config in configs.items()}
        tokenizer = family.load_tokenizer(repository / "preprocess" / "1" / "tokenizer")
        super().__init__(geometry, tokenizer, lambda name, inputs: self.runners[name].run(inputs), device)

    def clip(self, request: ResolvedRequest, step_cache: StepCache | None = None) -> tuple[np.ndarray, bytes]:
        video = self.generate(request, step_cache=step_cache)
        return video, encode_mp4(video, request.fps)


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1, cuda: bool = False) -> float:
    """Median seconds of ``fn`` (CUDA-synchronised when ``cuda``)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bf16_matmul_peak(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    seconds = timed(lambda: a @ a, repeats=10, warmup=3, cuda=True)
    return 2 * n**3 / seconds


def environment() -> dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        import diffusers
        import onnxruntime

        info["diffusers"], info["onnxruntime"] = diffusers.__version__, onnxruntime.__version__
    except ImportError:
        pass
    return info


def bench_request(geometry: ModelGeometry, steps: int | None, frames: int | None, precision: str | None = None,
                  height: int | None = None, width: int | None = None) -> ResolvedRequest:
    """The benchmark's request: the preset's defaults, with steps, frames, track and size where given."""
    p = geometry.presets
    track = precision or geometry.tier_precision("full")  # full precision by default
    return ResolvedRequest(
        BENCH_PROMPT, p.negative_prompt, steps or p.steps, p.guidance_scale, 42, height or p.height, width or p.width,
        frames or p.num_frames, p.fps, track, p.sampler,
    )


def as_client_request(r: ResolvedRequest) -> GenerationRequest:
    return GenerationRequest(r.prompt, steps=r.steps, guidance_scale=r.guidance_scale, seed=r.seed, height=r.height,
                             width=r.width, num_frames=r.num_frames, fps=r.fps, precision=r.precision, sampler=r.sampler,
                             step_cache=r.step_cache)


#: Triton's phases of an execution's compute time (statistics API).
COMPUTE_PHASES = ("compute_input", "compute_infer", "compute_output")


def model_stats(url: str) -> dict[str, dict[str, Any]]:
    """Per model: executions, inferences, compute and queue milliseconds, and per executed batch size
    its count and compute milliseconds (Triton's statistics API)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
    out = {}
    for m in stats:
        infer = m.get("inference_stats", {})
        # where an entry's compute goes: taking its inputs, executing, handing over its outputs (a BLS hop's cost)
        phases = {f"{k}_ms": float(infer.get(k, {}).get("ns", 0)) / 1e6 for k in COMPUTE_PHASES}
        out[m["name"]] = {
            "executions": float(m.get("execution_count", 0)),
            "inferences": float(m.get("inference_count", 0)),
            "compute_ms": sum(phases.values()),
            **phases,
            "queue_ms": float(infer.get("queue", {}).get("ns", 0)) / 1e6,
            "batches": {
                int(b["batch_size"]): {
                    "count": float(b.get("compute_infer", {}).get("count", 0)),
                    "compute_ms": float(b.get("compute_infer", {}).get("ns", 0)) / 1e6,
                }
                for b in m.get("batch_stats", [])
            },
        }
    return out


def stats_delta(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], clips: int) -> dict[str, dict[str, Any]]:
    """What each model did between two ``model_stats`` snapshots, per clip (batches: totals per batch size)."""
    out: dict[str, dict[str, Any]] = {}
    for name, now in after.items():
        then = before.get(name, {})
        keys = ("executions", "inferences", "compute_ms", "queue_ms", *(f"{k}_ms" for k in COMPUTE_PHASES))
        row: dict[str, Any] = {k: (now[k] - then.get(k, 0.0)) / clips for k in keys}
        batches = {}
        for size, b in now["batches"].items():
            old = then.get("batches", {}).get(size, {"count": 0.0, "compute_ms": 0.0})
            count = b["count"] - old["count"]
            if count:
                batches[size] = {"count": count, "compute_ms_each": (b["compute_ms"] - old["compute_ms"]) / count}
        row["batches"] = batches
        out[name] = row
    return out


def load(url: str, request: GenerationRequest, concurrency: int, per_client: int) -> float:
    """Clips per second with ``concurrency`` clients each sending ``per_client`` requests back to back."""
    errors: list[BaseException] = []

    def client_loop() -> None:
        try:
            with T2VClient(url) as client:
                for _ in range(per_client):
                    client.generate(request)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return concurrency * per_client / (time.perf_counter() - start)


def warm_postprocess(url: str, video: np.ndarray, fps: int, rounds: int = 5) -> float:
    """Send ``postprocess`` this clip's frames ``rounds`` times per instance, all instances at once each round; seconds.

    An instance's first few requests cost more than its later ones, outside the encode (CPU machine, 24x320x576,
    one instance's first 4 requests: Triton's input copy 7 ms instead of 1.2, the stub's round trip 30-50 ms over
    its encode instead of 3-7; the tiny preset's clips too), and sequential requests keep to one instance, so the
    bench's few timed requests met exactly those. The in-process side is timed after its warm-up; this makes the
    served side steady too. The cause, inside the Python backend's hand-over, is not pinned down.
    """
    import tritonclient.grpc as grpcclient

    inputs = [grpcclient.InferInput(FRAMES, list(video.shape), "UINT8"), grpcclient.InferInput("FPS", [1], "INT32")]
    inputs[0].set_data_from_numpy(video)  # serialised once, sent by every request
    inputs[1].set_data_from_numpy(np.array([fps], dtype=np.int32))
    outputs = [grpcclient.InferRequestedOutput(name) for name in (VIDEO, MP4)]
    clients = [grpcclient.InferenceServerClient(url) for _ in range(POSTPROCESS_INSTANCES)]  # one connection per instance
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(POSTPROCESS_INSTANCES) as pool:
            for _ in range(rounds):
                list(pool.map(lambda client: client.infer("postprocess", inputs, outputs=outputs), clients))
    finally:
        for client in clients:
            client.close()
    return time.perf_counter() - start


def stub_environment() -> dict[str, str]:
    """The environment the bench's server gives tritonserver and so its Python stubs: ``EmbeddedTritonServer``'s,
    with the stubs' numpy (``T2V_STUB_NUMPY1``, as ``run_served`` sets it on the GPU machine)."""
    from ..server import EmbeddedTritonServer

    return {**EmbeddedTritonServer().environment(), "T2V_STUB_NUMPY1": "1"}


def child_json(command: list[str], env: dict[str, str]) -> dict[str, Any] | None:
    """Run a bench child process; its last line of output as JSON, or None (its error printed) if it failed."""
    import json
    import subprocess

    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"{' '.join(command[1:4])} failed: {done.stderr[-2000:]}", flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


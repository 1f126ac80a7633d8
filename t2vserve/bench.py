"""Benchmarks: the served pipeline vs the same runners in-process vs diffusers, printed as tables.

    make bench                                      # CPU: tiny model, ONNX Runtime runner
    python client/bench.py inprocess --device cuda --model modelscope   # GPU part 1 (device tool)
    python client/bench.py served --device cuda --model modelscope      # GPU part 2 (device tool)

``inprocess``: diffusers eager pipeline (end to end), UNet step times (stock UNet with text, cached
K/V eager, cached K/V as the runner runs it), FLOPs and share of the measured bf16 peak, VAE
decode, and the t2vserve loop in-process with the runner's modules. ``served``: tritonserver with
the chosen runner: latency, serving overhead vs in-process (same runner, same process), throughput
at concurrency 1/2/4, BLS cost per step, device residency checked every step (T2V_ASSERT_DEVICE).
Every result lands in a JSON file next to a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .client import GenerationRequest, T2VClient
from .ddim import DDIM
from .export import DEFAULT_TINY_DIR, export_model, quiet_libraries
from .families import unet3d
from .params import ResolvedRequest, tokenize_pair
from .runners import make_runner
from .sampling import denoise, initial_latents, latents_to_frames_batch
from .server import EmbeddedTritonServer, REPO_ROOT
from .spec import FRAMES, INPUT_IDS, KV, LATENTS, NOISE_PRED, SAMPLE, TEXT_EMBEDS, TIMESTEP, UNET_TRACKS, ModelGeometry
from .video import encode_mp4, to_uint8_frames

#: ModelScope text-to-video-ms dimensions (random weights: speed does not depend on their values).
MODELSCOPE_UNET = {
    "sample_size": 32, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "cross_attention_dim": 1024,
    "attention_head_dim": 64, "norm_num_groups": 32,
}
MODELSCOPE_VAE = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2, "latent_channels": 4, "sample_size": 512, "scaling_factor": 0.18215,
}
MODELSCOPE_TEXT = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
                   "max_position_embeddings": 77, "projection_dim": 1024, "hidden_act": "gelu"}
BENCH_PROMPT = "a red panda eating bamboo in a misty forest, cinematic"


def build_modelscope_model(out_dir: Path, dtype: torch.dtype = torch.float16, device: str = "cuda") -> Path:
    """Full-size ModelScope-shaped model with random weights, saved in diffusers format."""
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tiny_tokenizer import save_tiny_tokenizer

    tokenizer = save_tiny_tokenizer(Path(out_dir) / "tokenizer")
    torch.manual_seed(0)
    with torch.device(device):
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **MODELSCOPE_TEXT))
        pipe = TextToVideoSDPipeline(vae=AutoencoderKL(**MODELSCOPE_VAE), text_encoder=text, tokenizer=tokenizer,
                                     unet=UNet3DConditionModel(**MODELSCOPE_UNET), scheduler=DDIMScheduler(**unet3d.SCHEDULER_CONFIG))
    pipe.to(dtype=dtype).save_pretrained(str(out_dir))
    return Path(out_dir)


# --------------------------------------------------------------------------------------------------
# The repository's runners in-process: the served computation minus Triton
# --------------------------------------------------------------------------------------------------
def runner_config(repository: Path, entry: str, runner: str) -> dict[str, Any]:
    """The model config Triton hands a Python-backend model (JSON of ``configs/<runner>.pbtxt``)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    path = repository / entry / "configs" / f"{runner}.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


class RunnerPipeline:
    """prompt -> clip with the runners of a repository, in this process (same code paths as served)."""

    def __init__(self, repository: Path, runner: str, device: str) -> None:
        self.geometry = ModelGeometry.load(repository / "scheduler" / "1" / "t2v_model.json")
        from transformers import CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(str(repository / "preprocess" / "1" / "tokenizer"))
        entries = ("text_encoder", "kv_projector", UNET_TRACKS["fp16"], "vae_decoder")
        self.runners = {e: make_runner(runner, repository / e / "1", runner_config(repository, e, runner)) for e in entries}
        self.device = torch.device(device)
        self.ddim = DDIM(self.geometry.scheduler_config)

    def generate(self, request: ResolvedRequest) -> tuple[np.ndarray, bytes]:
        ids = tokenize_pair(self.tokenizer, request.prompt, request.negative_prompt, self.geometry.text_max_length)
        embeds = self.runners["text_encoder"].run({INPUT_IDS: torch.from_numpy(ids).to(self.device)})[TEXT_EMBEDS]
        kv = self.runners["kv_projector"].run({TEXT_EMBEDS: embeds})[KV]
        unet = self.runners[UNET_TRACKS["fp16"]]
        latents = initial_latents(self.geometry, request.height, request.width, request.num_frames, request.seed, self.device)

        def call(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            return unet.run({SAMPLE: sample, TIMESTEP: timestep, KV: kv})[NOISE_PRED].to(sample.device)

        latents = denoise(call, latents, request.steps, request.guidance_scale, self.ddim)
        frames = self.runners["vae_decoder"].run({LATENTS: latents_to_frames_batch(latents)})[FRAMES]
        video = to_uint8_frames(frames.cpu().numpy())
        return video, encode_mp4(video, request.fps)


# --------------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------------
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


def prepare_repository(model: str, device: str, work: Path, runner: str) -> tuple[Path, Path]:
    """(model dir, repository) for ``model`` = tiny | modelscope; ONNX only where the runner needs it."""
    if model == "tiny":
        model_dir = DEFAULT_TINY_DIR if (DEFAULT_TINY_DIR / "model_index.json").exists() else unet3d.build_tiny_model(work / "tiny")
        preset = "tiny"
    else:
        model_dir, preset = build_modelscope_model(work / "modelscope", device=device), "modelscope"
    repository = work / "model_repository"
    export_model(model_dir, repository, preset, check=False, calibration_prompts=1, onnx=(runner == "onnxruntime"))
    return model_dir, repository


def bench_request(geometry: ModelGeometry, steps: int | None, frames: int | None) -> ResolvedRequest:
    p = geometry.presets
    return ResolvedRequest(BENCH_PROMPT, "", steps or p.steps, p.guidance_scale, 42, p.height, p.width, frames or p.num_frames, p.fps, "fp16")


def as_client_request(r: ResolvedRequest) -> GenerationRequest:
    return GenerationRequest(r.prompt, steps=r.steps, guidance_scale=r.guidance_scale, seed=r.seed, height=r.height,
                             width=r.width, num_frames=r.num_frames, fps=r.fps, precision=r.precision)


# --------------------------------------------------------------------------------------------------
# Part 1: in-process (diffusers eager, UNet steps, VAE, the runner's modules end to end)
# --------------------------------------------------------------------------------------------------
def run_inprocess(args: argparse.Namespace, model_dir: Path, repository: Path) -> dict[str, Any]:
    from diffusers import DDIMScheduler, TextToVideoSDPipeline
    from torch.utils.flop_counter import FlopCounterMode

    cuda = args.device == "cuda"
    geometry = ModelGeometry.load(repository / "scheduler" / "1" / "t2v_model.json")
    request = bench_request(geometry, args.steps, args.frames)
    results: dict[str, Any] = {"request": request.__dict__, "environment": environment()}
    dtype = torch.float16 if cuda else torch.float32

    pipe = TextToVideoSDPipeline.from_pretrained(str(model_dir), torch_dtype=dtype).to(args.device)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def diffusers_clip(steps: int) -> Any:
        return pipe(request.prompt, num_inference_steps=steps, guidance_scale=request.guidance_scale, height=request.height,
                    width=request.width, num_frames=request.num_frames, generator=torch.Generator("cpu").manual_seed(42), output_type="np")

    diffusers_clip(2)
    results["diffusers_clip_s"] = timed(lambda: diffusers_clip(request.steps), repeats=args.repeats, warmup=0, cuda=cuda)
    print(f"diffusers eager clip: {results['diffusers_clip_s']:.3f} s", flush=True)

    # UNet step: CFG batch 2 at the request's size
    shape = geometry.latent_shape(request.height, request.width, request.num_frames, batch=2)
    sample = torch.randn(shape, device=args.device, dtype=dtype)
    timestep = torch.full((2,), 981.0, device=args.device)
    text = torch.randn(2, geometry.text_max_length, pipe.text_encoder.config.hidden_size, device=args.device, dtype=dtype)
    cached = unet3d.CachedKVUNet(pipe.unet)
    kv = unet3d.KVProjector(pipe.unet)(text)
    with torch.inference_mode():
        stock = lambda: pipe.unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]  # noqa: E731
        results["unet_step_stock_eager_s"] = timed(stock, args.step_repeats, 3, cuda)
        results["unet_step_cached_kv_eager_s"] = timed(lambda: cached(sample, timestep, kv), args.step_repeats, 3, cuda)
        counter = FlopCounterMode(display=False)
        with counter:
            stock()
        results["unet_step_flop"] = int(counter.get_total_flops())
        latents = torch.randn(request.num_frames, geometry.latent_channels, *shape[3:], device=args.device, dtype=dtype)
        results["vae_decode_diffusers_s"] = timed(lambda: pipe.vae.decode(latents / geometry.vae_scaling_factor), 3, 1, cuda)
    print(f"UNet step eager: stock {results['unet_step_stock_eager_s'] * 1e3:.1f} ms, cached K/V {results['unet_step_cached_kv_eager_s'] * 1e3:.1f} ms", flush=True)
    del pipe, cached
    if cuda:
        torch.cuda.empty_cache()
        results["bf16_matmul_peak_flops"] = bf16_matmul_peak()

    # the runner's modules, exactly as the served engine slots run them
    runners = RunnerPipeline(repository, args.runner, args.device)
    unet = runners.runners[UNET_TRACKS["fp16"]]
    vae = runners.runners["vae_decoder"]
    kv_runner = runners.runners["kv_projector"].run({TEXT_EMBEDS: text.float()})[KV]
    feeds = {SAMPLE: sample.float(), TIMESTEP: timestep, KV: kv_runner}
    start = time.perf_counter()
    unet.run(feeds)
    results["runner_unet_first_call_s"] = time.perf_counter() - start  # includes torch.compile
    results["unet_step_runner_s"] = timed(lambda: unet.run(feeds), args.step_repeats, 3, cuda)
    results["vae_decode_runner_s"] = timed(lambda: vae.run({LATENTS: latents.float()}), 3, 1, cuda)
    runners.generate(request)
    results["inprocess_clip_s"] = timed(lambda: runners.generate(request), repeats=args.repeats, warmup=0, cuda=cuda)
    print(f"runner UNet step {results['unet_step_runner_s'] * 1e3:.1f} ms; in-process clip {results['inprocess_clip_s']:.3f} s", flush=True)
    return results


# --------------------------------------------------------------------------------------------------
# Part 2: served (tritonserver with the runner): latency, overhead, concurrency, BLS cost
# --------------------------------------------------------------------------------------------------
def model_stats(url: str) -> dict[str, dict[str, float]]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
    out = {}
    for m in stats:
        infer = m.get("inference_stats", {})
        out[m["name"]] = {
            "executions": float(m.get("execution_count", 0)),
            "inferences": float(m.get("inference_count", 0)),
            "compute_ms": sum(float(infer.get(k, {}).get("ns", 0)) for k in ("compute_input", "compute_infer", "compute_output")) / 1e6,
            "queue_ms": float(infer.get("queue", {}).get("ns", 0)) / 1e6,
        }
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


def run_served(args: argparse.Namespace, repository: Path) -> dict[str, Any]:
    geometry = ModelGeometry.load(repository / "scheduler" / "1" / "t2v_model.json")
    request = as_client_request(bench_request(geometry, args.steps, args.frames))
    results: dict[str, Any] = {"request": request.__dict__, "environment": environment(), "runner": args.runner}
    if args.device == "cuda":
        os.environ["T2V_ASSERT_DEVICE"] = "cuda"  # the scheduler checks K/V, latents, UNet output every step
        os.environ["T2V_STUB_NUMPY1"] = "1"  # client/gpu_bench.sh: numpy 1.x for Triton's Python stubs only
    log = Path(args.out).parent / "bench-tritonserver.log"

    def checkpoint() -> None:  # partial results survive a run cut short
        Path(args.out).write_text(json.dumps({"served": results, "partial": True}, indent=2, default=str) + "\n")

    pool = 2048 if args.device == "cuda" else None
    with EmbeddedTritonServer(repository, runner=args.runner, log_path=log, cuda_memory_pool_mb=pool) as server:
        with T2VClient(server.grpc_url) as client:
            start = time.perf_counter()
            client.generate(request)
            results["first_request_s"] = time.perf_counter() - start  # includes torch.compile in the runner
            print(f"first request {results['first_request_s']:.1f} s", flush=True)
            start = time.perf_counter()
            load(server.grpc_url, request, 4, 1)  # batch sizes > 2 appear: the runner's recompile happens here
            results["warmup_batched_s"] = time.perf_counter() - start
            checkpoint()
            before = model_stats(server.grpc_url)
            latencies = [client.generate(request).seconds for _ in range(args.repeats)]
            after = model_stats(server.grpc_url)
        results["served_clip_s"] = statistics.median(latencies)
        n, steps = len(latencies), request.steps
        per_request = {k: (after[k]["compute_ms"] - before[k]["compute_ms"]) / n for k in after}
        results["per_request_compute_ms"] = per_request
        unet_ms = per_request[UNET_TRACKS["fp16"]]
        results["scheduler_overhead_per_step_ms"] = (per_request["scheduler"] - unet_ms) / steps
        results["unet_step_served_ms"] = unet_ms / steps
        throughput = {}
        for concurrency in (1, 2, 4):
            throughput[concurrency] = load(server.grpc_url, request, concurrency, args.per_client)
            print(f"concurrency {concurrency}: {throughput[concurrency]:.3f} clips/s", flush=True)
            checkpoint()
        results["throughput_clips_per_s"] = throughput
        final = model_stats(server.grpc_url)[UNET_TRACKS["fp16"]]
        results["unet_mean_batch"] = final["inferences"] / max(final["executions"], 1)
        checkpoint()
        if args.perf_analyzer:
            results["perf_analyzer"] = run_perf_analyzer(args.perf_analyzer, server.grpc_url, Path(args.out).parent, request)
    print(f"served clip {results['served_clip_s']:.3f} s; scheduler overhead {results['scheduler_overhead_per_step_ms']:.2f} ms/step", flush=True)
    return results


def run_perf_analyzer(binary: str, url: str, out_dir: Path, request: GenerationRequest) -> dict[str, Any]:
    """The perf_analyzer recipe (t2vserve.perf) against the same server, with the bench's steps and precision."""
    from dataclasses import asdict

    from . import perf

    data = perf.input_data(request.precision or "fp16", STEPS=int(request.steps))
    input_file = out_dir / "perf_input.json"
    input_file.write_text(json.dumps(data, indent=2))
    rows = perf.sweep(binary, url, input_file, [1, 2, 4], out_dir, minimum=2)
    table = perf.markdown_table(rows)
    (out_dir / "perf.md").write_text(table)
    print(table, flush=True)
    commands = [" ".join(perf.perf_analyzer_command("perf_analyzer", "localhost:8001", Path("perf_input.json"), c, Path(f"perf_c{c}.csv"), minimum=2)) for c in (1, 2, 4)]
    return {"rows": [asdict(r) for r in rows], "commands": commands, "input_data": data}


def run_cpu(args: argparse.Namespace, repository: Path) -> dict[str, Any]:
    """``make bench``: the tiny model in-process (ONNX Runtime runners) vs through the embedded server."""
    geometry = ModelGeometry.load(repository / "scheduler" / "1" / "t2v_model.json")
    request = bench_request(geometry, args.steps, args.frames)
    runners = RunnerPipeline(repository, args.runner, args.device)
    runners.generate(request)
    inprocess = timed(lambda: runners.generate(request), repeats=args.repeats, warmup=0)
    del runners
    results = run_served(args, repository)
    results["inprocess_clip_s"] = inprocess
    return results


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    """A table of whatever parts are present (cpu, inprocess, served)."""
    lines: list[str] = []
    fmt_ms = lambda s: f"{s * 1e3:.1f} ms"  # noqa: E731
    if "inprocess" in results:
        r = results["inprocess"]
        peak = r.get("bf16_matmul_peak_flops")
        share = lambda s: f"{r['unet_step_flop'] / s / peak * 100:.0f}%" if peak else "-"  # noqa: E731
        lines += [
            "| in-process measurement | value | share of measured bf16 peak |", "|---|---|---|",
            f"| diffusers eager clip (fp16) | {r['diffusers_clip_s']:.2f} s | |",
            f"| t2vserve loop in-process, runner modules | {r['inprocess_clip_s']:.2f} s | |",
            f"| clip ratio t2vserve / diffusers | {r['inprocess_clip_s'] / r['diffusers_clip_s']:.2f} | |",
            f"| UNet step, stock diffusers (text embeddings), eager | {fmt_ms(r['unet_step_stock_eager_s'])} | {share(r['unet_step_stock_eager_s'])} |",
            f"| UNet step, cached K/V, eager | {fmt_ms(r['unet_step_cached_kv_eager_s'])} | {share(r['unet_step_cached_kv_eager_s'])} |",
            f"| UNet step, runner (as served) | {fmt_ms(r['unet_step_runner_s'])} | {share(r['unet_step_runner_s'])} |",
            f"| UNet FLOP per step (CFG batch 2) | {r['unet_step_flop'] / 1e12:.1f} TFLOP | |",
            f"| VAE decode, diffusers eager / runner | {fmt_ms(r['vae_decode_diffusers_s'])} / {fmt_ms(r['vae_decode_runner_s'])} | |",
            f"| runner UNet first call (torch.compile included) | {r['runner_unet_first_call_s']:.1f} s | |",
        ]
        if peak:
            lines.append(f"| measured bf16 matmul peak (8192^3) | {peak / 1e12:.0f} TFLOP/s | |")
        lines.append("")
    served = results.get("served") or results.get("cpu")
    if served:
        inprocess = (results.get("inprocess") or served).get("inprocess_clip_s")
        lines += ["| served measurement | value |", "|---|---|", f"| served clip (gRPC, median) | {served['served_clip_s']:.3f} s |"]
        if inprocess:
            lines.append(f"| serving overhead = served / in-process (same runner) | {served['served_clip_s'] / inprocess:.3f} |")
        lines += [
            f"| UNet step as served (Triton compute) | {served['unet_step_served_ms']:.1f} ms |",
            f"| scheduler overhead per step (BLS round trip + DDIM update) | {served['scheduler_overhead_per_step_ms']:.2f} ms |",
            f"| first request (warm-up, compile) | {served['first_request_s']:.1f} s |",
            f"| mean UNet batch (samples per execution) under load | {served['unet_mean_batch']:.2f} |",
        ]
        tp = {int(k): v for k, v in served["throughput_clips_per_s"].items()}
        for c in sorted(tp):
            lines.append(f"| throughput at concurrency {c} | {tp[c]:.3f} clips/s ({tp[c] / tp[1]:.2f}x concurrency 1) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="t2vserve benchmarks")
    parser.add_argument("part", choices=("cpu", "inprocess", "served", "report"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=("tiny", "modelscope"), default="tiny")
    parser.add_argument("--runner", choices=("onnxruntime", "torch"), default=None, help="default: onnxruntime on CPU, torch on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the preset's)")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-repeats", type=int, default=10)
    parser.add_argument("--per-client", type=int, default=2, help="requests per client in the concurrency runs")
    parser.add_argument("--perf-analyzer", default=None, help="perf_analyzer binary: also run the perf recipe")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench.json")
    parser.add_argument("--inputs", type=Path, nargs="*", default=[], help="report: JSON files to merge")
    args = parser.parse_args(argv)
    quiet_libraries()
    args.runner = args.runner or ("torch" if args.device == "cuda" else "onnxruntime")
    if args.part == "report":
        merged: dict[str, Any] = {}
        for path in args.inputs:
            merged.update(json.loads(path.read_text()))
        print(markdown(merged))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="t2v-bench-") as tmp:
        work = Path(tmp)
        model_dir, repository = prepare_repository(args.model, args.device, work, args.runner)
        if args.part == "inprocess":
            results = {"inprocess": run_inprocess(args, model_dir, repository)}
        elif args.part == "served":
            results = {"served": run_served(args, repository)}
        else:
            results = {"cpu": run_cpu(args, repository)}
    results["command"] = " ".join(["python client/bench.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(markdown(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

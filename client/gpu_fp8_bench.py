"""FP8 vs bf16 denoiser forward on the GPU, the way the torch runner runs it (random weights, full size).

    PYTHONPATH=. python3 client/gpu_fp8_bench.py --out outputs/fp8.json [--family wan22] [--batch 1]
    PYTHONPATH=. python3 client/gpu_fp8_bench.py --tiny --device cpu --out /tmp/fp8.json   # plumbing check

The module is the project's cached-K/V denoiser slot module (``families.<family>.slot(...).module``
wraps the same class) around a full-size diffusers model with random weights: speed does not depend
on the values. Variants in order: bf16 eager, bf16 torch.compile, fp8 eager (``t2vserve.kernels.fp8``:
E4M3 linear layers through ``torch._scaled_mm``), fp8 torch.compile (the bf16 ones must come first:
the conversion is in place). Median of CUDA-event
timings after warm-up; the JSON is rewritten after every variant, so a run cut short keeps what it
measured. fp8 rows also give the relative error of the output against bf16 (random weights: an
upper bound on what trained weights see, whose activations have more structure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch


def wan22_module(tiny: bool, device: str) -> tuple[torch.nn.Module, dict[str, int], Callable[[str], bool]]:
    from diffusers import WanTransformer3DModel

    from t2vserve.families.wan22 import TI2V_5B_TRANSFORMER
    from t2vserve.families.wan22_modules import CachedKVTransformer

    config = dict(TI2V_5B_TRANSFORMER)
    if tiny:
        config.update(num_attention_heads=2, attention_head_dim=32, ffn_dim=128, num_layers=2, text_dim=64, freq_dim=32)
    with torch.device(device):
        module = CachedKVTransformer(WanTransformer3DModel(**config).to(torch.bfloat16)).eval()
    # 832x480, 81 frames -> latents 21 x 30 x 52 (VAE 4x temporal, 16x spatial): 8,190 tokens
    shape = {"channels": 48, "frames": 3 if tiny else 21, "height": 8 if tiny else 30, "width": 8 if tiny else 52, "text": 512}
    keep = lambda name: any(part in name for part in ("condition_embedder", "proj_out", "patch_embedding", "scale_shift"))  # noqa: E731
    return module, shape, keep


FAMILIES = {"wan22": wan22_module}


def time_forward(fn: Callable[[], torch.Tensor], device: str, repeats: int) -> tuple[float, float]:
    """(first call seconds, median seconds of ``repeats`` calls after two warm-ups)."""
    start = time.perf_counter()
    fn()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    first = time.perf_counter() - start
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="wan22")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny config: checks the plumbing on any machine")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default="bf16-eager,bf16-compile,fp8-eager,fp8-compile")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from t2vserve.kernels.fp8 import convert_to_fp8, fp8_supported

    device = torch.device(args.device)
    if not fp8_supported(device):
        print(f"{device} has no FP8 GEMMs (compute capability >= 8.9 needed)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    module, shape, keep = FAMILIES[args.family](args.tiny, args.device)
    b = args.batch
    with torch.device(args.device):
        sample = torch.randn(b, shape["channels"], shape["frames"], shape["height"], shape["width"], dtype=torch.bfloat16)
        timestep = torch.full((b,), 500.0)
        kv = torch.randn(b, shape["text"], module.layout.width, dtype=torch.bfloat16)
    results: dict[str, Any] = {
        "family": args.family, "batch": b, "shape": shape, "tiny": args.tiny, "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "variants": {},
    }
    reference = None
    converted = False
    variants = args.variants.split(",")
    for variant in variants:
        precision, mode = variant.split("-")
        if precision == "fp8" and not converted:
            report = convert_to_fp8(module, keep)
            results["fp8_conversion"] = report.summary()
            print(report.summary(), flush=True)
            converted = True
        if precision == "bf16" and converted:
            print(f"skipping {variant}: bf16 variants must come before fp8 ones", file=sys.stderr)
            continue
        forward = torch.compile(module) if mode == "compile" else module
        try:
            with torch.inference_mode():
                run = lambda: forward(sample, timestep, kv)  # noqa: E731
                first, median = time_forward(run, args.device, args.repeats)
                output = run().float()
        except Exception as exc:  # one variant's failure must not lose the others
            results["variants"][variant] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(f"{variant}: failed: {exc}", flush=True)
            continue
        row: dict[str, Any] = {"first_call_s": first, "forward_ms": median * 1e3}
        if precision == "bf16" and reference is None:
            reference = output
        elif reference is not None:
            row["relative_error_vs_bf16"] = float((output - reference).norm() / reference.norm())
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        results["variants"][variant] = row
        print(f"{variant}: {row}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    base = {m: results["variants"].get(f"bf16-{m}", {}).get("forward_ms") for m in ("eager", "compile")}
    lines = [f"{args.family}, batch {b}, {results['device']}", "", "| variant | forward | speed-up vs bf16 (same mode) | first call | rel. error vs bf16 |", "|---|---|---|---|---|"]
    for variant, row in results["variants"].items():
        if "error" in row:
            lines.append(f"| {variant} | failed: {row['error'][:80]} | | | |")
            continue
        ref = base.get(variant.split("-")[1])
        speed = f"{ref / row['forward_ms']:.2f}x" if ref else "-"
        error = f"{row['relative_error_vs_bf16'] * 100:.1f} %" if "relative_error_vs_bf16" in row else "-"
        lines.append(f"| {variant} | {row['forward_ms']:.1f} ms | {speed} | {row['first_call_s']:.1f} s | {error} |")
    print("\n".join(lines))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

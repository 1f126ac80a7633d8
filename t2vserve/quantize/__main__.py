"""``python -m t2vserve.quantize sweep``: per-layer-group sensitivity and calibration methods of the recipe."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from ..quality.sensitivity import run_sweep

    parser = argparse.ArgumentParser(prog="python -m t2vserve.quantize", description="quantization tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", help="quantize one layer group at a time and measure clip PSNR vs floating point")
    sweep.add_argument("--model-dir", type=Path, default=None, help="diffusers directory (default: the demo model)")
    sweep.add_argument("--preset", default="tiny")
    sweep.add_argument("--out", type=Path, default=Path("docs/int8-sensitivity.md"))
    sweep.add_argument("--calibration-prompts", type=int, default=None)
    sweep.add_argument("--slot", default=None, help="quantized slot to sweep, e.g. transformer_int8 (default: the model's first)")
    sweep.add_argument("--methods", default="max,percentile,smoothquant",
                       help="calibration methods compared on the whole recipe (entropy: KL histograms, ~20 min on 2 CPU cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run_sweep(args.model_dir, args.preset, args.out, args.calibration_prompts, tuple(args.methods.split(",")), args.slot)


if __name__ == "__main__":
    sys.exit(main())

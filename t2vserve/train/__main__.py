"""``python -m t2vserve.train``: train a family's tiny demo model on the shapes world (``make train-demo``).

On the GPU machine (one device call): ``client/gpu_train.sh``. On the CPU, ``--smoke`` runs a few
steps of every stage (``make test`` does), which checks the whole path but trains nothing useful.
``python -m t2vserve.train distill ...`` distils a trained model into its few-step student (``distill_cli``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..families import DEFAULT_FAMILY, FAMILIES
from .cli import dataclass_flags, given, quiet_logging
from .fit import TrainConfig, train
from .samples import evaluate

SMOKE = {"vae_steps": 2, "vae_batch": 2, "steps": 3, "batch": 2, "warmup": 1, "log_every": 1}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["distill"]:
        from .distill_cli import main as distill_main

        return distill_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default=DEFAULT_FAMILY)
    parser.add_argument("--out", type=Path, required=True, help="directory the trained model is saved to (diffusers format)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="a few steps of each stage (CPU test of the path)")
    parser.add_argument("--evaluate", action="store_true", help="after training: adherence on the quality prompts, sample MP4s")
    parser.add_argument("--eval-seeds", type=int, nargs="*", default=None)
    parser.add_argument("--eval-guidance", type=float, nargs="*", default=[],
                        help="also evaluate at these guidance scales (summaries under guidance_sweep)")
    parser.add_argument("--eval-background", default=None, help="evaluate every quality prompt on this background (a model trained on one)")
    dataclass_flags(parser, TrainConfig, skip=("family",))
    args = parser.parse_args(argv)
    quiet_logging()
    config = TrainConfig.for_family(args.family, **{**(SMOKE if args.smoke else {}), **given(args, TrainConfig, skip=("family",))})
    summary = train(config, args.out, args.device)
    if args.evaluate:
        start = time.perf_counter()
        background = args.eval_background
        report = evaluate(args.out, args.family, args.device, args.eval_seeds, args.out.parent / f"samples-{args.family}", background=background)
        report["guidance_sweep"] = [{k: v for k, v in evaluate(args.out, args.family, args.device, args.eval_seeds, guidance_scale=g,
                                                             background=background).items() if k != "clips"} for g in args.eval_guidance]
        report["seconds"] = time.perf_counter() - start
        (args.out.parent / f"adherence-{args.family}.json").write_text(json.dumps(report, indent=1) + "\n")
        for run in [report, *report["guidance_sweep"]]:
            for group, values in run["summary"].items():
                print(f"adherence {group} (guidance {run['guidance_scale']}): " + ", ".join(f"{k} {v:.0%}" for k, v in values.items()))
    if summary["final_loss"] is not None:
        print(f"final loss {summary['final_loss']:.5f} after {summary['steps']} steps in {summary['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

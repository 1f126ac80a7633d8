"""``python -m t2vserve.train``: train a family's tiny demo model on the shapes world (``make train-demo``).

On the GPU machine (one device call): ``client/gpu_train.sh``. On the CPU, ``--smoke`` runs a few
steps of every stage (``make test`` does), which checks the whole path but trains nothing useful.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import fields
from pathlib import Path

from ..families import DEFAULT_FAMILY, FAMILIES
from .fit import TrainConfig, train
from .samples import evaluate

SMOKE = {"vae_steps": 2, "vae_batch": 2, "steps": 3, "batch": 2, "warmup": 1, "log_every": 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default=DEFAULT_FAMILY)
    parser.add_argument("--out", type=Path, required=True, help="directory the trained model is saved to (diffusers format)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="a few steps of each stage (CPU test of the path)")
    parser.add_argument("--evaluate", action="store_true", help="after training: adherence on the quality prompts, sample MP4s")
    parser.add_argument("--eval-seeds", type=int, nargs="*", default=None)
    parser.add_argument("--eval-guidance", type=float, nargs="*", default=[],
                        help="also evaluate at these guidance scales (summaries under guidance_sweep)")
    for f in fields(TrainConfig):
        if f.name != "family":
            flag = "--" + f.name.replace("_", "-")
            if isinstance(f.default, bool):
                parser.add_argument(flag, action="store_true", default=None)
            else:
                parser.add_argument(flag, type=type(f.default), default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    values = {**(SMOKE if args.smoke else {}), **{f.name: getattr(args, f.name) for f in fields(TrainConfig)
                                                  if f.name != "family" and getattr(args, f.name) is not None}}
    config = TrainConfig(family=args.family, **values)
    summary = train(config, args.out, args.device)
    if args.evaluate:
        start = time.perf_counter()
        report = evaluate(args.out, args.family, args.device, args.eval_seeds, args.out.parent / f"samples-{args.family}")
        report["guidance_sweep"] = [{k: v for k, v in evaluate(args.out, args.family, args.device, args.eval_seeds,
                                                             guidance_scale=g).items() if k != "clips"} for g in args.eval_guidance]
        report["seconds"] = time.perf_counter() - start
        (args.out.parent / f"adherence-{args.family}.json").write_text(json.dumps(report, indent=1) + "\n")
        for run in [report, *report["guidance_sweep"]]:
            for group, values in run["summary"].items():
                print(f"adherence {group} (guidance {run['guidance_scale']}): " + ", ".join(f"{k} {v:.0%}" for k, v in values.items()))
    print(f"final loss {summary['final_loss']:.5f} after {summary['steps']} steps in {summary['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

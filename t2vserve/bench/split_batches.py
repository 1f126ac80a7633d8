"""Split batches: denoiser executions that ran back to back with batches one execution could have held.

Loops released together by the step barrier (``t2vserve.step_barrier``) should reach the dynamic batcher within
its delay and run as one batch. When one arrives later than the delay, the batcher runs the others without it and
the late loop's rows right after: two executions (b6 + b2, b4 + b4) where one (b8) would have done, each paying
a step's fixed cost. This finds them in the server log from the stubs' stage lines (``T2V_STAGE_TIMING=1``: one
line per execution, with its batch and milliseconds, stamped by Triton's logger), so the bench reports them per
concurrency and a saved log can be read again::

    python -m t2vserve.bench.split_batches bench-tritonserver.log --entry unet
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..spec import DENOISER_MAX_BATCH
from ..triton_models.stage_timing import STAGE_LOG

#: ``I1207 19:57:24.056208 7119 stage_timing.py:53] "unet: stage ms: inputs 0.40, run 103.46, outputs 0.75, batch 6"``
_LINE = re.compile(r"^[IWE]\d{4} (?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d\.\d+) .*?\"(?P<entry>[\w.-]+): " + re.escape(STAGE_LOG) + r'(?P<stages>[^"]*)"')
#: The second of two executions starts within this of the first one's end: it was queued while the first ran. A
#: loop's own next call comes later: its sampler update and BLS round trip (H100, 256x256x16: of 876 gaps between
#: executions, those of queued ones took 1-2.5 ms, a loop's own 3.8 ms and more; one took 3.2 ms).
BACK_TO_BACK_S = 0.003


@dataclass(frozen=True)
class Execution:
    start_s: float  # seconds since midnight (the log's clock), from the end minus the stages' milliseconds
    end_s: float
    batch: int


def executions(text: str, entry: str) -> list[Execution]:
    """``entry``'s executions in a server log, in order (a day boundary in the log is carried over)."""
    found: list[Execution] = []
    day = 0.0
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match or match["entry"] != entry:
            continue
        stages = {name: float(value) for name, _, value in (f.rpartition(" ") for f in match["stages"].split(", "))}
        end = int(match["h"]) * 3600 + int(match["m"]) * 60 + float(match["s"]) + day
        if found and end < found[-1].end_s - 43200:  # past midnight
            day, end = day + 86400, end + 86400
        spent = sum(v for k, v in stages.items() if k in ("inputs", "run", "outputs")) / 1e3
        found.append(Execution(end - spent, end, int(stages.get("batch", 0))))
    return found


def split_pairs(runs: list[Execution], max_batch: int, gap_s: float = BACK_TO_BACK_S) -> Counter[tuple[int, int]]:
    """(first batch, second batch) -> how many times two executions ran back to back (the second starting within
    ``gap_s`` of the first's end) with batches that fit one execution of ``max_batch``."""
    pairs: Counter[tuple[int, int]] = Counter()
    for first, second in zip(runs, runs[1:]):
        if second.start_s - first.end_s < gap_s and first.batch + second.batch <= max_batch:
            pairs[first.batch, second.batch] += 1
    return pairs


def own_call_gap_s(runs: list[Execution]) -> float | None:
    """The median gap between consecutive executions of one lone loop (concurrency 1): its own next call's delay
    (sampler update, BLS round trip); None with fewer than two executions."""
    gaps = sorted(second.start_s - first.end_s for first, second in zip(runs, runs[1:]))
    return gaps[len(gaps) // 2] if gaps else None


def back_to_back_s(own_gap_s: float | None) -> float:
    """The gap under which a next execution was queued already: ``BACK_TO_BACK_S``, or half a lone loop's own gap
    where that is shorter (a CPU server's loop calls again within a millisecond or two)."""
    return BACK_TO_BACK_S if own_gap_s is None else min(BACK_TO_BACK_S, own_gap_s / 2)


def summary(runs: list[Execution], max_batch: int, gap_s: float = BACK_TO_BACK_S) -> dict[str, Any]:
    """JSON-ready: executions, the gap used, split pairs in all and by batch sizes ("6+2": n)."""
    pairs = split_pairs(runs, max_batch, gap_s)
    return {"executions": len(runs), "gap_ms": gap_s * 1e3, "split_pairs": sum(pairs.values()),
            "by_batches": {f"{a}+{b}": n for (a, b), n in sorted(pairs.items())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="split denoiser batches in a t2vserve server log (T2V_STAGE_TIMING=1)")
    parser.add_argument("log", type=Path, nargs="+")
    parser.add_argument("--entry", default="unet")
    parser.add_argument("--max-batch", type=int, default=DENOISER_MAX_BATCH)
    parser.add_argument("--gap-ms", type=float, default=BACK_TO_BACK_S * 1e3)
    parser.add_argument("--out", type=Path, default=None, help="write the summaries as JSON here")
    args = parser.parse_args(argv)
    results = {str(log): summary(executions(log.read_text(errors="replace"), args.entry), args.max_batch, args.gap_ms / 1e3) for log in args.log}
    print(f"| log | {args.entry} executions | back-to-back pairs one batch could hold | by batch sizes |\n|---|---|---|---|")
    for log, r in results.items():
        print(f"| {log} | {r['executions']} | {r['split_pairs']} | {', '.join(f'{k}: {n}' for k, n in r['by_batches'].items()) or '-'} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

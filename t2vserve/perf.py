"""perf_analyzer recipe for the ``t2v`` ensemble: input data, a concurrency sweep, and a results table.

    python client/perf_sweep.py --url localhost:8001 --concurrency 1,2,4 --out outputs/perf.md
    python -m t2vserve.perf --write-inputs client/perf        # regenerate the committed input-data files

A request takes seconds (a whole DDIM loop), so each concurrency level is its own perf_analyzer run
measured in request-count windows (``count_windows``: a window lasts until that many requests have
completed) instead of perf_analyzer's default 5-second time windows, with a stability threshold that
tolerates the few samples such windows hold. Each run writes perf_analyzer's CSV (``-f``); the sweep
reads them back and writes one markdown table: concurrency, throughput, p50/p90/p99 latency.

Input data: perf_analyzer's JSON format (``{"data": [{input: [values]}, ...]}``, used round robin).
BYTES inputs are lists of strings. Parameters left out take the server's preset defaults (optional
inputs of the ensemble), so the same file serves the tiny and the ModelScope preset.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .families import DEFAULT_FAMILY, get_family
from .spec import PARAMETERS

#: The precision tracks every model of the default family has (the committed input-data files; no optional student).
TRACKS = get_family(DEFAULT_FAMILY).model_tracks(components=None)["tracks"]

MODEL = "t2v"
PERF_DIR = Path(__file__).resolve().parent.parent / "client" / "perf"
#: Prompts the sweep cycles through (content does not change the cost: the text is always 77 tokens).
PROMPTS = (
    "a red panda eating bamboo in a misty forest, cinematic",
    "an astronaut riding a horse on the moon, slow motion",
    "waves crashing on a rocky beach during a storm at night",
    "a timelapse of clouds moving over a city skyline",
)
FIRST_SEED = 1000
#: count_windows: completed requests per measurement window = max(MIN_WINDOW_REQUESTS, 2 x concurrency).
MIN_WINDOW_REQUESTS = 4
STABILITY_PERCENTAGE = 25
MAX_TRIALS = 6

_JSON_TYPES: dict[str, type] = {"TYPE_STRING": str, "TYPE_INT32": int, "TYPE_INT64": int, "TYPE_FP32": float, "TYPE_BOOL": bool}


def input_data(
    precision: str, prompts: Sequence[str] = PROMPTS, first_seed: int = FIRST_SEED, **parameters: Any
) -> dict[str, Any]:
    """perf_analyzer input data: one entry per prompt (seeds first_seed, first_seed + 1, ...).

    ``parameters``: further ensemble inputs by name (``STEPS=10``); names and types are checked against spec.
    """
    if precision not in TRACKS:
        raise ValueError(f"precision must be one of {sorted(TRACKS)}")
    types = {p.name: _JSON_TYPES[p.triton_dtype] for p in PARAMETERS}
    for name, value in parameters.items():
        if name not in types:
            raise ValueError(f"{name} is not an input of {MODEL}; inputs: {', '.join(types)}")
        if not isinstance(value, types[name]) or (isinstance(value, bool) and types[name] is not bool):
            raise ValueError(f"{name} must be {types[name].__name__}, got {value!r}")
    data = [
        {
            "PROMPT": [prompt],
            "SEED": [first_seed + i],
            "PRECISION": [precision],
            **{name: [value] for name, value in parameters.items()},
        }
        for i, prompt in enumerate(prompts)
    ]
    return {"data": data}


def committed_inputs() -> dict[str, dict[str, Any]]:
    """File name -> content of the input-data files kept in client/perf/ (one per UNet precision)."""
    return {f"t2v_{precision}.json": input_data(precision) for precision in sorted(TRACKS)}


def write_inputs(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in committed_inputs().items():
        (directory / name).write_text(json.dumps(content, indent=2) + "\n")
        paths.append(directory / name)
    return paths


# --------------------------------------------------------------------------------------------------
# perf_analyzer runs and their CSV
# --------------------------------------------------------------------------------------------------
def window_requests(concurrency: int, minimum: int = MIN_WINDOW_REQUESTS) -> int:
    return max(minimum, 2 * concurrency)


def perf_analyzer_command(
    binary: str,
    url: str,
    input_file: Path,
    concurrency: int,
    csv_file: Path,
    protocol: str = "grpc",
    minimum: int = MIN_WINDOW_REQUESTS,
) -> list[str]:
    return [
        binary, "-m", MODEL, "-u", url, "-i", protocol,
        "--input-data", str(input_file),
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-mode", "count_windows",
        "--measurement-request-count", str(window_requests(concurrency, minimum)),
        "--stability-percentage", str(STABILITY_PERCENTAGE),
        "--max-trials", str(MAX_TRIALS),
        "-f", str(csv_file),
    ]  # fmt: skip


@dataclass(frozen=True)
class PerfRow:
    concurrency: int
    throughput: float  # requests (clips) per second
    p50_s: float
    p90_s: float
    p99_s: float
    avg_s: float | None  # "Avg latency" (newer perf_analyzer versions only)


def parse_perf_csv(text: str) -> list[PerfRow]:
    """Rows of perf_analyzer's ``-f`` CSV (latencies there are microseconds), by concurrency."""
    reader = csv.DictReader(io.StringIO(text))
    needed = ["Concurrency", "Inferences/Second", "p50 latency", "p90 latency", "p99 latency"]
    missing = [name for name in needed if name not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"not a perf_analyzer CSV: no column(s) {', '.join(missing)}")
    rows = []
    for record in reader:
        if not (record.get("Concurrency") or "").strip().isdigit():
            continue
        avg = record.get("Avg latency")
        rows.append(
            PerfRow(
                concurrency=int(record["Concurrency"]),
                throughput=float(record["Inferences/Second"]),
                p50_s=float(record["p50 latency"]) / 1e6,
                p90_s=float(record["p90 latency"]) / 1e6,
                p99_s=float(record["p99 latency"]) / 1e6,
                avg_s=float(avg) / 1e6 if avg not in (None, "") else None,
            )
        )
    return sorted(rows, key=lambda row: row.concurrency)


def markdown_table(rows: Sequence[PerfRow], title: str = "") -> str:
    lines = [f"{title}\n"] if title else []
    lines += [
        "| concurrency | throughput (clips/s) | p50 latency (s) | p90 latency (s) | p99 latency (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r.concurrency} | {r.throughput:.3f} | {r.p50_s:.2f} | {r.p90_s:.2f} | {r.p99_s:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


Runner = Callable[[list[str]], int]


def _run(command: list[str]) -> int:
    return subprocess.call(command)


def sweep(
    binary: str,
    url: str,
    input_file: Path,
    concurrencies: Sequence[int],
    work_dir: Path,
    protocol: str = "grpc",
    minimum: int = MIN_WINDOW_REQUESTS,
    run: Runner = _run,
    log: Callable[[str], None] = print,
) -> list[PerfRow]:
    """One perf_analyzer run per concurrency level; the parsed rows of all of them."""
    rows: list[PerfRow] = []
    for concurrency in concurrencies:
        csv_file = work_dir / f"perf_c{concurrency}.csv"
        command = perf_analyzer_command(binary, url, input_file, concurrency, csv_file, protocol, minimum)
        log(f"$ {shlex.join(command)}")
        code = run(command)
        if code != 0:
            raise RuntimeError(f"perf_analyzer exited with {code} at concurrency {concurrency}")
        rows += parse_perf_csv(csv_file.read_text())
    return rows


def _concurrencies(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency levels are positive integers, e.g. 1,2,4")
    return values


def main(argv: Sequence[str] | None = None, run: Runner = _run) -> int:
    parser = argparse.ArgumentParser(
        description="perf_analyzer concurrency sweep of the t2v ensemble -> markdown table"
    )
    parser.add_argument("--url", default="localhost:8001", help="server (gRPC by default)")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--perf-analyzer", default="perf_analyzer", help="perf_analyzer binary (default: on PATH)")
    parser.add_argument("--input-data", type=Path, default=PERF_DIR / "t2v_int8.json")
    parser.add_argument(
        "--concurrency", type=_concurrencies, default=[1, 2, 4], help="comma-separated levels (default 1,2,4)"
    )
    parser.add_argument(
        "--window-requests",
        type=int,
        default=MIN_WINDOW_REQUESTS,
        help="completed requests per measurement window, at least (2 x concurrency when larger)",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/perf.md"), help="markdown table written here")
    parser.add_argument(
        "--csv-dir", type=Path, default=None, help="keep perf_analyzer's CSV files here (default: temporary)"
    )
    parser.add_argument(
        "--write-inputs", type=Path, default=None, metavar="DIR", help="write the input-data files into DIR and exit"
    )
    args = parser.parse_args(argv)
    if args.write_inputs:
        for path in write_inputs(args.write_inputs):
            print(f"wrote {path}")
        return 0
    with tempfile.TemporaryDirectory(prefix="t2v-perf-") as tmp:
        work_dir = args.csv_dir or Path(tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        rows = sweep(
            args.perf_analyzer,
            args.url,
            args.input_data,
            args.concurrency,
            work_dir,
            args.protocol,
            args.window_requests,
            run,
        )
    title = (
        f"perf_analyzer, model `{MODEL}` at {args.url} ({args.protocol}), input data `{args.input_data.name}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    table = markdown_table(rows, title)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table, end="")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak: a bounded load on a loopback tritonserver, with failures, latency and the server's memory over time.

    make soak DURATION=600 CONCURRENCY=8
    python -m t2vserve.bench.soak --duration 60 --concurrency 2 --steps 4 --out outputs/soak.json

Starts its own embedded tritonserver on 127.0.0.1 (free ports: nothing outside this machine reaches
it), sends one warm-up request, then ``--concurrency`` clients send ``t2v`` requests back to back for
``--duration`` seconds (half of them over gRPC, half over HTTP with ``--protocol both``; seeds and
prompts vary). Requests in flight at the deadline finish (each bounded by ``--request-timeout``).

The report, printed as a table and written as JSON: requests completed and failed, p50/p99 latency for
each half of the run and in total, and the resident memory of ``tritonserver`` and of its
Python-backend stub processes (``procs.py``) at the start (after the warm-up), the middle and the
end; the JSON also holds a memory sample every ``--sample-every`` seconds and the failures by
message. Exit status 1 when more than ``--max-failures`` requests failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..client import GenerationRequest, T2VClient
from ..settings import DEFAULT_MODEL_REPOSITORY, LOOPBACK, REPO_ROOT
from ..procs import ServerMemory, server_memory

PROMPTS = (
    "a red circle moving to the right on a black background",
    "a green square moving up on a white background",
    "a blue triangle growing on a gray background",
    "a yellow ball shrinking on a black background",
    "a purple box moving left on a white background",
)
MIB = 2**20


@dataclass(frozen=True)
class Outcome:
    done_s: float  # since the load started
    latency_s: float
    protocol: str
    error: str | None = None


def _percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _summary(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Requests completed, failed, and the p50/p99 latency of the successful ones."""
    latencies = [o.latency_s for o in outcomes if o.error is None]
    failures = sum(o.error is not None for o in outcomes)
    return {"requests": len(outcomes), "failures": failures, "p50_s": _percentile(latencies, 50), "p99_s": _percentile(latencies, 99)}


class Soak:
    """``concurrency`` client threads against one server until ``duration_s`` has passed."""

    def __init__(
        self, urls: dict[str, str], server_pid: int, duration_s: float, concurrency: int, protocol: str = "both",
        steps: int | None = None, request_timeout_s: float = 300.0, sample_every_s: float = 5.0,
    ) -> None:  # fmt: skip
        self.urls, self.server_pid, self.duration_s, self.concurrency = urls, server_pid, duration_s, concurrency
        self.protocols = ["grpc", "http"] if protocol == "both" else [protocol]
        self.steps, self.request_timeout_s, self.sample_every_s = steps, request_timeout_s, sample_every_s
        self.outcomes: list[Outcome] = []
        self.samples: list[ServerMemory] = []
        self._lock = threading.Lock()
        self._counter = 0

    def _request(self) -> GenerationRequest:
        with self._lock:
            self._counter += 1
            n = self._counter
        return GenerationRequest(PROMPTS[n % len(PROMPTS)], seed=n, steps=self.steps)

    def _client(self, protocol: str) -> T2VClient:
        return T2VClient(self.urls[protocol], protocol, timeout_s=self.request_timeout_s)

    def _worker(self, index: int, start: float, deadline: float) -> None:
        protocol = self.protocols[index % len(self.protocols)]
        client = self._client(protocol)
        try:
            while time.monotonic() < deadline:
                request, sent = self._request(), time.monotonic()
                error = None
                try:
                    client.generate(request)
                except Exception as exc:  # every failure is counted and reported, by message
                    error = f"{type(exc).__name__}: {exc}"[:300]
                    client.close()
                    client = self._client(protocol)  # a fresh channel after a broken one
                now = time.monotonic()
                with self._lock:
                    self.outcomes.append(Outcome(now - start, now - sent, protocol, error))
        finally:
            client.close()

    def _sampler(self, start: float, stop: threading.Event) -> None:
        while not stop.wait(self.sample_every_s):
            self.samples.append(server_memory(self.server_pid, time.monotonic() - start))

    def warm_up(self) -> float:
        with self._client(self.protocols[0]) as client:
            sent = time.monotonic()
            client.generate(self._request())
            return time.monotonic() - sent

    def run(self, log: Any = print) -> dict[str, Any]:
        warmup_s = self.warm_up()
        start = time.monotonic()
        deadline, middle = start + self.duration_s, self.duration_s / 2
        points = {"start": server_memory(self.server_pid, 0.0)}
        stop = threading.Event()
        sampler = threading.Thread(target=self._sampler, args=(start, stop), daemon=True)
        workers = [threading.Thread(target=self._worker, args=(i, start, deadline)) for i in range(self.concurrency)]
        for thread in [sampler, *workers]:
            thread.start()
        log(f"soak: {self.concurrency} clients ({'/'.join(self.protocols)}) for {self.duration_s:g} s; warm-up {warmup_s:.1f} s")
        time.sleep(max(0.0, start + middle - time.monotonic()))
        points["middle"] = server_memory(self.server_pid, time.monotonic() - start)
        log(f"soak: middle, {len(self.outcomes)} requests so far")
        for thread in workers:
            thread.join()
        points["end"] = server_memory(self.server_pid, time.monotonic() - start)
        stop.set()
        sampler.join()
        return self.report(points, warmup_s, time.monotonic() - start)

    def report(self, points: dict[str, ServerMemory], warmup_s: float, elapsed_s: float) -> dict[str, Any]:
        middle = points["middle"].elapsed_s
        halves = {
            "start": [],
            "middle": [o for o in self.outcomes if o.done_s < middle],
            "end": [o for o in self.outcomes if o.done_s >= middle],
        }
        rows = [{"point": name, **points[name].as_dict(), **_summary(halves[name])} for name in ("start", "middle", "end")]
        rows[0].update(requests=None, failures=None)
        total = _summary(self.outcomes)
        return {
            "config": {
                "duration_s": self.duration_s, "concurrency": self.concurrency, "protocols": self.protocols,
                "steps": self.steps, "request_timeout_s": self.request_timeout_s, "urls": self.urls,
            },
            "warmup_s": round(warmup_s, 3),
            "elapsed_s": round(elapsed_s, 3),
            "total": {**total, "throughput_clips_per_s": round(total["requests"] / elapsed_s, 4)},
            "by_protocol": {p: _summary([o for o in self.outcomes if o.protocol == p]) for p in self.protocols},
            "points": rows,
            "rss_growth_bytes": points["end"].total - points["start"].total,
            "failures_by_message": dict(Counter(o.error for o in self.outcomes if o.error).most_common()),
            "memory_samples": [s.as_dict() for s in self.samples],
        }  # fmt: skip


def _cell(value: Any, fmt: str = "{}") -> str:
    return "–" if value is None else fmt.format(value)


def table(report: dict[str, Any]) -> str:
    """The report's start/middle/end rows and total as a markdown table (requests and latency per half)."""
    lines = [
        "| point | elapsed (s) | requests | failures | p50 (s) | p99 (s) | tritonserver RSS (MiB) | stubs RSS (MiB) | total RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["points"]:
        lines.append(
            f"| {row['point']} | {row['elapsed_s']:.0f} | {_cell(row['requests'])} | {_cell(row['failures'])} "
            f"| {_cell(row['p50_s'], '{:.2f}')} | {_cell(row['p99_s'], '{:.2f}')} | {row['server_rss_bytes'] / MIB:.0f} "
            f"| {row['stubs_rss_bytes'] / MIB:.0f} ({row['stub_count']}) | {row['total_rss_bytes'] / MIB:.0f} |"
        )
    t = report["total"]
    lines.append(
        f"| total | {report['elapsed_s']:.0f} | {t['requests']} | {t['failures']} | {_cell(t['p50_s'], '{:.2f}')} "
        f"| {_cell(t['p99_s'], '{:.2f}')} | | | {report['rss_growth_bytes'] / MIB:+.0f} (end - start) |"
    )
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(report))


def main(argv: list[str] | None = None) -> int:
    from ..server import EmbeddedTritonServer, RUNNER_CONFIG_NAMES

    parser = argparse.ArgumentParser(description="Bounded soak of the t2v ensemble on a loopback tritonserver")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients sending back to back (default 8)")
    parser.add_argument("--protocol", choices=("grpc", "http", "both"), default="both")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per request (default: the preset's)")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="client timeout of one request (s)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--max-failures", type=int, default=0, help="exit 1 when more requests fail")
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--runner", choices=sorted(RUNNER_CONFIG_NAMES), default="onnxruntime")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "soak.json", help="JSON; the table beside it (.md)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1:
        parser.error("--duration and --concurrency must be positive")
    log_path = args.out.with_name(args.out.stem + "-tritonserver.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with EmbeddedTritonServer(args.model_repository, args.runner, log_path=log_path, host=LOOPBACK) as server:
        assert server.process is not None
        urls = {"grpc": server.grpc_url, "http": server.http_url}
        soak = Soak(urls, server.process.pid, args.duration, args.concurrency, args.protocol, args.steps,
                    args.request_timeout, args.sample_every)  # fmt: skip
        report = soak.run()
    report["config"]["repository"], report["config"]["runner"] = str(args.model_repository), args.runner
    write(report, args.out)
    print(table(report), end="")
    for message, count in report["failures_by_message"].items():
        print(f"  {count} x {message}")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}; server log {log_path}")
    return 0 if report["total"]["failures"] <= args.max_failures else 1


if __name__ == "__main__":
    sys.exit(main())

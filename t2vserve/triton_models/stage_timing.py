"""Opt-in split of an entry's time into its stages, for the benchmarks (``T2V_STAGE_TIMING=1``; off by default;
an absolute path instead of 1: on while that file exists, read at each record, so the bench can time the same
server with and without the marks' CUDA synchronisations).

Each record (one execution of a runner entry, one request of the sampling loop) becomes one server-log line
``<entry>: stage ms: <stage> <ms>, ...``; ``t2vserve.bench`` reads them back (``parse_stage_lines``). Marks
synchronise the CUDA device first, so a stage's milliseconds include the GPU work it queued: where the entry
synchronises anyway (handing a CUDA tensor to Triton does) this costs nothing. No Triton import here: the bench
process parses the lines with the same module.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Callable

#: Environment switch read by the Python-backend models; the GPU bench sets it for its server.
STAGE_TIMING_ENV = "T2V_STAGE_TIMING"
#: Marks a stage-timing line in the server log: ``<entry>: stage ms: inputs 0.41, run 143.20, outputs 0.30``.
STAGE_LOG = "stage ms: "
_LINE = re.compile(r"(?P<entry>[\w.-]+): " + re.escape(STAGE_LOG) + r'(?P<stages>[^"]*)')  # Triton quotes the message


def stage_timing_enabled() -> bool:
    """Whether the entries make a ``StageTimer``: ``$T2V_STAGE_TIMING`` is 1 or a switch file's path."""
    value = os.environ.get(STAGE_TIMING_ENV, "")
    return value == "1" or value.startswith("/")


def stage_timing_switch() -> Path | None:
    """The switch file of ``$T2V_STAGE_TIMING`` (records are timed while it exists); None: always on (or off)."""
    value = os.environ.get(STAGE_TIMING_ENV, "")
    return Path(value) if value.startswith("/") else None


class StageTimer:
    """Milliseconds per stage of one record at a time per thread (``t2v_stream`` runs a loop per worker thread);
    ``log`` gets each finished record's line."""

    def __init__(self, entry: str, log: Callable[[str], None], sync: Callable[[], None] | None = None) -> None:
        self.entry, self.log, self.sync = entry, log, sync
        self.switch = stage_timing_switch()
        self._record = threading.local()

    def start(self) -> None:
        """A new record; timed only while the switch file exists, where there is one (else marks do nothing)."""
        self._record.active = self.switch is None or self.switch.exists()
        if not self._record.active:
            return
        if self.sync is not None:
            self.sync()
        self._record.stages, self._record.last = {}, time.perf_counter()

    def mark(self, stage: str) -> None:
        """The time since the previous mark (or ``start``) is added to ``stage``."""
        if not getattr(self._record, "active", False):
            return
        if self.sync is not None:
            self.sync()
        now, record = time.perf_counter(), self._record
        record.stages[stage] = record.stages.get(stage, 0.0) + (now - record.last) * 1e3
        record.last = now

    def finish(self, **counts: int) -> None:
        if not getattr(self._record, "active", False):
            return
        stages = self._record.stages
        fields = [f"{stage} {ms:.2f}" for stage, ms in stages.items()] + [f"{k} {v}" for k, v in counts.items()]
        self.log(f"{self.entry}: {STAGE_LOG}{', '.join(fields)}")


def parse_stage_lines(text: str) -> dict[str, dict[str, float]]:
    """Server-log ``stage ms`` lines -> per entry, each stage's mean over its records (and ``records``)."""
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for line in text.splitlines():
        found = _LINE.search(line)
        if not found:
            continue
        entry = found["entry"]
        counts[entry] = counts.get(entry, 0) + 1
        row = sums.setdefault(entry, {})
        for field in found["stages"].split(", "):
            name, _, value = field.rpartition(" ")
            row[name] = row.get(name, 0.0) + float(value)
    return {entry: {**{k: v / counts[entry] for k, v in row.items()}, "records": counts[entry]} for entry, row in sums.items()}

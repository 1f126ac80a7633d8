"""The server's processes from /proc (Linux): tritonserver, its Python-backend stubs, their memory.

Each Python-backend model instance runs in its own ``triton_python_backend_stub`` process, a child of
``tritonserver``; its command line names the instance's ``model.py`` (``.../<model>/1/model.py``) and
its shared-memory region, from which the model name is read here.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

STUB = "triton_python_backend_stub"
PROC = Path("/proc")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``; None when it is gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def argv(pid: int) -> list[str]:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Every live (not zombie) process below ``pid``, nearest first."""
    parents: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] != "Z":
            parents.setdefault(stat[1], []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        children = [child for parent in frontier for child in parents.get(parent, [])]
        found += children
        frontier = children
    return found


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def find_tritonserver() -> int | None:
    """The pid of the one ``tritonserver`` process visible here (a container's), None if there is none or several."""
    found = [
        int(e.name) for e in PROC.iterdir() if e.name.isdigit() and Path((argv(int(e.name)) or [""])[0]).name == "tritonserver"
    ]
    return found[0] if len(found) == 1 else None


def model_repository_of(server_pid: int) -> Path | None:
    """The ``--model-repository`` of a running tritonserver (the first, where it has several)."""
    flag = "--model-repository="
    return next((Path(a[len(flag):]) for a in argv(server_pid) if a.startswith(flag)), None)


def stub_model(pid: int) -> str | None:
    """The model whose Python-backend stub ``pid`` is (``None``: not a stub)."""
    args = argv(pid)
    if not args or Path(args[0]).name != STUB:
        return None
    script = next((a for a in args[1:] if a.endswith("model.py")), "")
    return Path(script).parent.parent.name if script else "?"


def stubs(server_pid: int) -> dict[int, str]:
    """pid -> model name of every Python-backend stub of ``server_pid``."""
    return {pid: model for pid in descendants(server_pid) if (model := stub_model(pid)) is not None}


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS), 0 when it is gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class ServerMemory:
    """RSS of tritonserver and of its stubs (by model; sums count shared library pages once per process)."""

    elapsed_s: float
    server_bytes: int
    stub_bytes: dict[str, int]  # model -> RSS of its stub processes together
    stub_count: int

    @property
    def stubs_total(self) -> int:
        return sum(self.stub_bytes.values())

    @property
    def total(self) -> int:
        return self.server_bytes + self.stubs_total

    def as_dict(self) -> dict[str, object]:
        return {
            "elapsed_s": round(self.elapsed_s, 2), "server_rss_bytes": self.server_bytes,
            "stubs_rss_bytes": self.stubs_total, "total_rss_bytes": self.total, "stub_count": self.stub_count,
            "stub_rss_bytes_by_model": dict(sorted(self.stub_bytes.items())),
        }  # fmt: skip


def server_memory(server_pid: int, elapsed_s: float = 0.0) -> ServerMemory:
    by_model: dict[str, int] = {}
    found = stubs(server_pid)
    for pid, model in found.items():
        by_model[model] = by_model.get(model, 0) + rss_bytes(pid)
    return ServerMemory(elapsed_s, rss_bytes(server_pid), by_model, len(found))


def wait_for(condition: Callable[[], object], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll ``condition()`` until it is true or ``timeout_s`` passed; its last value."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()) and time.monotonic() < deadline:
        time.sleep(interval_s)
    return bool(result)


def kill(pid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False

"""Is the server whole? Triton's readiness, and a live stub process for every Python-backend model instance.

Triton 2.51 (its Python backend, r24.10) neither restarts a ``triton_python_backend_stub`` that died
(killed, out of memory, a crash in native code) nor reports its model not ready: ``/v2/health/ready``
stays 200 while every request routed to that instance fails with "Stub process '<instance>' is not
healthy." (and a streamed request it was serving never ends). So readiness alone misses it; this
module compares the stub processes below ``tritonserver`` (``procs.py``) with the instance counts of
the models' configs (Triton's model-config API) and says which model lost one.

    python -m t2vserve.health --url localhost:8000          # exit 0 when whole; 1 naming what is missing

The docker compose ``triton`` service uses it as its healthcheck; ``python -m t2vserve.server`` runs
the same check every few seconds and stops tritonserver when a stub is lost (README, "Faults").
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from . import procs


def _get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def repository_models(repository: Path) -> list[str]:
    return sorted(config.parent.name for config in Path(repository).glob("*/config.pbtxt"))


def instances(config: dict[str, Any]) -> int:
    """Model instances (= stub processes for the Python backend) of a model config as Triton completed it."""
    total = 0
    for group in config.get("instance_group") or [{}]:
        count = int(group.get("count", 1))
        gpus = group.get("gpus") or []
        total += count * max(1, len(gpus)) if group.get("kind") == "KIND_GPU" else count
    return total


def expected_stubs(http_url: str, models: Iterable[str]) -> dict[str, int]:
    """Model -> number of Python-backend stub processes it runs (only Python-backend models)."""
    expected = {}
    for name in models:
        config = _get_json(f"http://{http_url}/v2/models/{name}/config")
        if config.get("backend") == "python":
            expected[name] = instances(config)
    return expected


def missing_stubs(server_pid: int, expected: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Model -> (stub processes alive, expected) for each model with fewer stubs than instances."""
    alive = Counter(procs.stubs(server_pid).values())
    return {model: (alive[model], count) for model, count in expected.items() if alive[model] < count}


def describe(missing: dict[str, tuple[int, int]]) -> str:
    return "; ".join(f"{model}: {alive} of {count} stub processes alive" for model, (alive, count) in missing.items())


def ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def problems(http_url: str, server_pid: int | None = None, repository: Path | None = None) -> list[str]:
    """What keeps the server from serving every request: [] when it is ready and whole."""
    if not ready(http_url):
        return [f"{http_url}: not ready (/v2/health/ready)"]
    server_pid = server_pid or procs.find_tritonserver()
    if server_pid is None:
        return ["no single tritonserver process found here: pass --pid"]
    repository = repository or procs.model_repository_of(server_pid)
    if repository is None:
        return [f"process {server_pid} has no --model-repository"]
    try:
        expected = expected_stubs(http_url, repository_models(repository))
    except OSError as exc:
        return [f"model configs unreadable: {exc}"]
    missing = missing_stubs(server_pid, expected)
    return [f"Python-backend stub lost, requests to it fail: {describe(missing)}"] if missing else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Triton readiness plus a live stub for every Python-backend instance")
    parser.add_argument("--url", default="localhost:8000", help="Triton's HTTP address")
    parser.add_argument("--pid", type=int, default=None, help="tritonserver's pid (default: the one running here)")
    args = parser.parse_args(argv)
    found = problems(args.url, args.pid)
    for problem in found:
        print(f"unhealthy: {problem}", file=sys.stderr)
    if not found:
        print("ok: ready, every Python-backend stub alive")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

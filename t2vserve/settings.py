"""Where t2vserve's files live and where its embedded server listens: the project's settings, in one place.

Environment variables override the defaults where a deployment needs another value:

``T2V_SERVER_HOST``
    Interface the embedded ``tritonserver`` (``python -m t2vserve.server``, ``make serve``, the demo,
    the benchmarks) binds its HTTP, gRPC and metrics ports to. Default ``127.0.0.1``: reachable from
    this machine only. ``0.0.0.0`` listens on every interface (the ``--host`` flag of the launcher
    does the same for one run). The docker compose ``triton`` service runs ``tritonserver`` itself
    and listens on every interface of its container.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "model_repository"

LOOPBACK = "127.0.0.1"
SERVER_HOST_ENV = "T2V_SERVER_HOST"


def server_host() -> str:
    """Interface the embedded server listens on: ``$T2V_SERVER_HOST``, else loopback only."""
    return os.environ.get(SERVER_HOST_ENV, "").strip() or LOOPBACK

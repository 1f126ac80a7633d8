"""Checks of the GPU host that ``build_engines.py --check`` makes before it starts tritonserver.

- The NVIDIA driver must run the image's CUDA: its torch 2.13.0 from PyPI is a CUDA 13 build, and CUDA
  13 needs driver R580 or newer. An older driver would only show up later, as CUDA errors of the
  Python-backend models while the server loads.
- The admin APIs' key must not be empty: docker compose substitutes an unset ``TRITON_ADMIN_KEY`` with
  nothing (so that ``docker compose run engines`` works without it), and tritonserver would stop on
  ``triton-admin-key=`` with a bare "Bad option".
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from typing import Sequence

#: Oldest driver branch that runs CUDA 13 (minor-version compatibility: every 13.x runs on R580+).
MIN_DRIVER_BRANCH = 580
DRIVER_QUERY = ("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
RESTRICTED_FLAGS = ("--http-restricted-api=", "--grpc-restricted-protocol=")
ADMIN_KEY_HINT = "export TRITON_ADMIN_KEY=$(openssl rand -hex 16), then start the triton service again"


def query_driver(timeout_s: float = 30.0) -> str | None:
    """nvidia-smi's driver version output (a line per GPU); None where nvidia-smi is absent or fails."""
    try:
        result = subprocess.run(DRIVER_QUERY, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def _version_lines(output: str) -> list[str]:
    return [line for line in output.split() if re.fullmatch(r"\d+(\.\d+)*", line)]


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def parse_driver_versions(output: str) -> list[tuple[int, ...]]:
    """Driver versions in nvidia-smi's CSV output, e.g. "580.65.06" -> (580, 65, 6); unreadable lines skipped."""
    return [_key(line) for line in _version_lines(output)]


def driver_status(output: str | None) -> tuple[bool, str]:
    """(whether to go on, what to log) for nvidia-smi's output; unknown versions are not refused."""
    versions = _version_lines(output or "")
    if not versions:
        return True, f"NVIDIA driver version unknown (nvidia-smi gave {output!r}): not checked"
    oldest = min(versions, key=_key)
    if _key(oldest)[0] < MIN_DRIVER_BRANCH:
        return False, (
            f"error: NVIDIA driver {oldest} is too old for this image: its torch is a CUDA 13 build, which needs "
            f"driver R{MIN_DRIVER_BRANCH} or newer. Upgrade the host's NVIDIA driver"
        )
    return True, f"NVIDIA driver {oldest}: runs CUDA 13 (R{MIN_DRIVER_BRANCH}+)"


def admin_key_refusal(command: Sequence[str]) -> str | None:
    """Why ``command`` (tritonserver's) must not start: a restricted-API flag whose key value is empty."""
    for arg in command:
        if arg.startswith(RESTRICTED_FLAGS):
            flag, value = arg.split("=", 1)
            header, _, key = value.rpartition(":")[2].partition("=")
            if not key.strip():
                return (
                    f"error: {flag} gives the header {header!r} an empty value: TRITON_ADMIN_KEY is not set. "
                    + ADMIN_KEY_HINT
                )
    return None


def cuda_device_count() -> int:
    """CUDA devices this process sees (the driver API, as tritonserver counts them; honours CUDA_VISIBLE_DEVICES);
    0 without a driver or a GPU."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value

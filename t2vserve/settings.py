"""Where t2vserve's files live and where its embedded server listens: the project's settings, in one place.

Environment variables override the defaults where a deployment needs another value:

``T2V_SERVER_HOST``
    Interface the embedded ``tritonserver`` (``python -m t2vserve.server``, ``make serve``, the demo,
    the benchmarks) binds its HTTP, gRPC and metrics ports to. Default ``127.0.0.1``: reachable from
    this machine only. ``0.0.0.0`` listens on every interface (the ``--host`` flag of the launcher
    does the same for one run). The docker compose ``triton`` service runs ``tritonserver`` itself
    and listens on every interface of its container.

``T2V_COMPILE_CACHE_DIR``
    Where the torch runner's ``torch.compile`` keeps its compiled artefacts across server restarts
    (Inductor's FX-graph and autotuning caches, Triton's kernel cache): the embedded server passes it
    to its Python-backend stubs. Unset: torch's default under ``/tmp`` (lost with the machine). The
    compose ``triton-torch`` service keeps it in the ``torch-compile-cache`` volume, so a restarted
    server loads its kernels instead of compiling them again.

``T2V_TORCH_COMPILE``
    Overrides the torch runner's ``compile`` config parameter for every entry (``none``, ``default``,
    ``max-autotune``): e.g. ``none`` to serve eagerly (no compile at start, slower steps), for debugging
    or a benchmark of the eager path. Unset: each entry's ``configs/torch.pbtxt`` decides.

``T2V_COMPILE_GUARDS``
    Which of dynamo's guards the torch runner's compiled modules check on every call: ``all`` (the default) or
    ``inputs``: the guards on the module's own state are skipped (``torch.compiler.skip_guard_on_all_nn_modules_unsafe``;
    a served module is never changed after load) and the inputs' guards kept (their shapes pick the compiled batch
    size). A lone served step cannot hide the guards' CPU time behind the previous step's GPU work (``gpu_bench.sh
    ramp`` measures it). The entry's ``compile_guards`` config parameter sets it per entry.

``T2V_COMPILED_BATCH_SIZES``
    Overrides the torch runner's ``compiled_batch_sizes`` for every batched entry (e.g. ``2``: only one request's
    CFG pair is compiled, so a latency-only deployment or benchmark is READY after one compile instead of four;
    a larger batch the batcher forms is then compiled when first seen, under load). Unset: the entry's
    config decides (every size the batcher can form).
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


COMPILE_CACHE_ENV = "T2V_COMPILE_CACHE_DIR"
TORCH_COMPILE_ENV = "T2V_TORCH_COMPILE"
TORCH_COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


def torch_compile_mode(configured: str) -> str:
    """The torch runner's torch.compile mode: ``$T2V_TORCH_COMPILE`` if set, else ``configured`` (the entry's config)."""
    mode = os.environ.get(TORCH_COMPILE_ENV, "").strip() or configured or "none"
    if mode not in TORCH_COMPILE_MODES:
        raise ValueError(f"{TORCH_COMPILE_ENV} / compile: {mode!r} is not a torch.compile mode; allowed: {', '.join(TORCH_COMPILE_MODES)}")
    return mode


COMPILE_GUARDS_ENV = "T2V_COMPILE_GUARDS"
COMPILE_GUARDS = ("all", "inputs")


def compile_guards(configured: str) -> str:
    """The torch runner's guards (``all`` or ``inputs``): ``$T2V_COMPILE_GUARDS`` if set, else ``configured``."""
    guards = os.environ.get(COMPILE_GUARDS_ENV, "").strip() or configured or "all"
    if guards not in COMPILE_GUARDS:
        raise ValueError(f"{COMPILE_GUARDS_ENV} / compile_guards: {guards!r}; allowed: {', '.join(COMPILE_GUARDS)}")
    return guards


COMPILED_SIZES_ENV = "T2V_COMPILED_BATCH_SIZES"


def compiled_batch_sizes_override(configured: str) -> str:
    """The torch runner's compiled batch sizes (``"2,4,6,8"``): ``$T2V_COMPILED_BATCH_SIZES`` if set, else ``configured``."""
    sizes = os.environ.get(COMPILED_SIZES_ENV, "").strip() or configured
    if sizes and not all(s.strip().isdigit() and int(s) > 0 for s in sizes.split(",")):
        raise ValueError(f"{COMPILED_SIZES_ENV} / compiled_batch_sizes: {sizes!r} is not a comma-separated list of positive batch sizes")
    return sizes


def compile_cache_environment() -> dict[str, str]:
    """Environment that puts torch.compile's on-disk caches under ``$T2V_COMPILE_CACHE_DIR`` (empty if unset)."""
    root = os.environ.get(COMPILE_CACHE_ENV, "").strip()
    if not root:
        return {}
    return {
        "TORCHINDUCTOR_CACHE_DIR": str(Path(root) / "inductor"),  # FX graphs, autotuning, generated kernels
        "TRITON_CACHE_DIR": str(Path(root) / "triton"),  # compiled Triton kernels (cubins)
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
    }

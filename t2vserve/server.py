"""Start the real ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel (embedded default).

On a GPU host the NGC container runs ``tritonserver`` directly (see docker-compose.yml); on a machine
without Docker the same model repository runs on the binary from the wheel, with the Python backend
stub matching the running interpreter.

``python -m t2vserve.server`` runs it in the foreground: SIGTERM or SIGINT to the launcher is forwarded
to tritonserver and waited for, and tritonserver gets SIGTERM should the launcher itself die, so a
stopped launcher never leaves a server behind. It listens on ``settings.server_host()`` (loopback
unless ``T2V_SERVER_HOST`` or ``--host`` says otherwise). Once the server is ready it checks every few
seconds that each Python-backend model instance still has its stub process (``health.py``): Triton
2.51 neither restarts a dead stub nor reports its model not ready, so the launcher stops tritonserver
and exits ``EXIT_STUB_LOST`` for a supervisor to restart it (``--keep-serving-on-stub-loss``: don't).
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from . import health, hostcheck
from .settings import DEFAULT_MODEL_REPOSITORY, LOOPBACK, REPO_ROOT, SERVER_HOST_ENV, compile_cache_environment, server_host
from .step_barrier import remove_tables

__all__ = ["DEFAULT_MODEL_REPOSITORY", "REPO_ROOT", "EmbeddedTritonServer", "free_port", "main", "serve"]


@dataclass(frozen=True)
class ModelConfigSet:
    """One set of the repository's configs, picked with tritonserver's ``--model-config-name`` (``repository.py``
    writes them): ``configs/<name>.pbtxt`` where an entry's differs from its ``config.pbtxt`` (name None)."""

    name: str | None
    runner: str  # what fills the engine slots: tensorrt (plans) | onnxruntime | torch (runners.py)
    gpu: bool  # the sampling loops (scheduler, t2v_stream) are KIND_GPU instances (t2vserve.placement)


#: Every config set. Triton refuses a KIND_GPU instance where it finds no GPU, so the torch runner, which also
#: runs on the CPU, has a CPU set beside its GPU one; the launcher picks it where CUDA is absent.
MODEL_CONFIGS = (
    ModelConfigSet(None, "tensorrt", gpu=True),
    ModelConfigSet("onnxruntime", "onnxruntime", gpu=False),
    ModelConfigSet("torch", "torch", gpu=True),
    ModelConfigSet("torch-cpu", "torch", gpu=False),
)


def model_config_name(runner: str, cuda: bool) -> str | None:
    """The config set of ``runner`` for a host with (``cuda``) or without CUDA; a runner with one set gets it anyway."""
    sets = [config for config in MODEL_CONFIGS if config.runner == runner]
    if not sets:
        raise ValueError(f"runner must be one of {sorted({config.runner for config in MODEL_CONFIGS})}, got {runner!r}")
    return next((config.name for config in sets if config.gpu == cuda), sets[0].name)


#: Runner names accepted by ``--runner`` -> the config set of a GPU host (``tensorrt``: each entry's ``config.pbtxt``).
RUNNER_CONFIG_NAMES = {config.runner: model_config_name(config.runner, cuda=True) for config in MODEL_CONFIGS}


def _pytriton_root() -> Path:
    """The tritonserver tree inside the nvidia-pytriton wheel (found, not imported: its client needs gevent)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: it provides the embedded tritonserver binary")
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "tritonserver"


def free_port() -> int:
    """An unused TCP port on localhost."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _backend_dir(root: Path) -> Path:
    """A backend directory holding the Python backend and the stub for this interpreter."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"nvidia-pytriton ships no Python backend stub for Python {version}")
    backend_dir = Path(tempfile.mkdtemp(prefix="t2vserve-backends-"))
    python_dir = backend_dir / "python"
    shutil.copytree(root / "backends" / "python", python_dir)
    shutil.copy2(stub, python_dir / "triton_python_backend_stub")
    return backend_dir


@functools.lru_cache(maxsize=1)
def python_library_dir() -> str | None:
    """A directory (one per process, removed at exit) holding only a link to this interpreter's shared libpython,
    which the Python-backend stub links: what the stubs' LD_LIBRARY_PATH needs. Not sysconfig's LIBDIR itself, which
    may be a system library directory: on Ubuntu's Python it is /usr/lib/x86_64-linux-gnu, whose cuDNN 9.14 then
    shadowed the cuDNN 9.19 torch ships in every stub (GPU round 6: the UNet step 5 % slower served than in-process).
    None for an interpreter without a shared libpython (its stub cannot load it either)."""
    name = sysconfig.get_config_var("INSTSONAME")
    library = Path(str(sysconfig.get_config_var("LIBDIR"))) / str(name)
    if not name or not library.is_file():
        return None
    directory = Path(tempfile.mkdtemp(prefix="t2vserve-libpython-"))
    (directory / library.name).symlink_to(library)
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return str(directory)


#: Signals that stop the foreground launcher (forwarded to tritonserver, which shuts down gracefully on both).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    return LOOPBACK if host in ("0.0.0.0", "::", "", "localhost") else host


def _die_with_parent(parent: int) -> None:
    """``preexec_fn``: the child gets SIGTERM when ``parent`` (the launcher) dies, even by SIGKILL (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0 or os.getppid() != parent:
        os._exit(1)  # no guard, or the launcher is already gone: do not start an orphan


#: Where the Python backend's shared-memory regions live (POSIX shm on Linux).
SHM_DIR = Path("/dev/shm")


def remove_shm_regions(prefix: str) -> list[Path]:
    """Delete the shared-memory regions named ``prefix``* (a stopped server's); the paths removed."""
    removed = []
    for path in SHM_DIR.glob(f"{prefix}*") if SHM_DIR.is_dir() else ():
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@dataclass
class EmbeddedTritonServer:
    """A ``tritonserver`` process on this machine; use as a context manager or call start()/stop()."""

    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    runner: str = "onnxruntime"
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    log_path: Path | None = None
    verbose: bool = False
    cuda_memory_pool_mb: int | None = None  # GPU runners exchange clip-sized tensors through this pool
    host: str = field(default_factory=server_host)  # interface of all three ports (settings.server_host)
    extra_args: tuple[str, ...] = ()  # further tritonserver flags, appended last
    cuda: bool | None = None  # whether the host has CUDA, for the runner's config set (None: ask the driver)
    startup_timeout_s: float = 180.0  # READY waits for the models' warm-up (torch.compile on GPU runners: minutes)
    process: "subprocess.Popen[bytes] | None" = None
    _backend_dir: Path | None = None
    # this server's Python-backend shared-memory regions are named <prefix><uuid> in SHM_DIR: stop() removes what
    # is left of them (a tritonserver killed with its stubs unlinks none)
    shm_prefix: str = field(default_factory=lambda: f"t2v_{os.getpid()}_{uuid.uuid4().hex[:8]}_")

    @property
    def http_url(self) -> str:
        return f"{connect_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{connect_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus text of Triton's metrics and the models' custom ones (e.g. the conditioning cache)."""
        return f"http://{connect_host(self.host)}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        root = _pytriton_root()
        if self._backend_dir is None:
            self._backend_dir = _backend_dir(root)
        cmd = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self._backend_dir}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--model-control-mode=none",
            "--exit-on-error=true",
            "--exit-timeout-secs=5",
            "--log-verbose=1" if self.verbose else "--log-verbose=0",
            # The Python backend moves tensors through shared memory: start with room for a clip.
            "--backend-config=python,shm-default-byte-size=16777216",
            "--backend-config=python,shm-growth-byte-size=16777216",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        if self.cuda_memory_pool_mb:
            cmd.append(f"--cuda-memory-pool-byte-size=0:{self.cuda_memory_pool_mb * 2**20}")
        config_name = self.config_name()
        if config_name:
            cmd.append(f"--model-config-name={config_name}")
        return cmd + list(self.extra_args)

    def config_name(self) -> str | None:
        """The runner's config set on this host: ``torch`` on CUDA, ``torch-cpu`` without (``MODEL_CONFIGS``)."""
        cuda = self.cuda if self.cuda is not None else hostcheck.cuda_device_count() > 0
        return model_config_name(self.runner, cuda)

    def environment(self) -> dict[str, str]:
        root = _pytriton_root()
        env = dict(os.environ)
        # the stub links libpython: a directory holding only that library, never sysconfig's LIBDIR itself (python_library_dir)
        libpython = python_library_dir()
        libdirs = [str(root.parent.parent / "nvidia_pytriton.libs"), *([libpython] if libpython else [])]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs + [env.get("LD_LIBRARY_PATH", "")])
        # The stub's embedded interpreter ignores PYTHONPATH and finds its prefix through the first python3
        # on PATH: put this interpreter (a virtual environment's, typically) first so the stub sees the
        # same packages, t2vserve included (installed, editable or not).
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
        for name, value in compile_cache_environment().items():  # torch.compile caches that outlive a restart
            env.setdefault(name, value)
        return env

    def launch(
        self, output: IO[bytes] | int | None = subprocess.DEVNULL, die_with_parent: bool = False
    ) -> "subprocess.Popen[bytes]":
        """Start tritonserver in its own process group (no waiting); ``output`` receives its log."""
        if self.runner not in RUNNER_CONFIG_NAMES:
            raise ValueError(f"runner must be one of {sorted(RUNNER_CONFIG_NAMES)}, got {self.runner!r}")
        linux = sys.platform.startswith("linux")
        guard = functools.partial(_die_with_parent, os.getpid()) if die_with_parent and linux else None
        self.process = subprocess.Popen(
            self.command(), env=self.environment(), stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=guard,
        )
        return self.process

    def start(self, timeout_s: float | None = None) -> "EmbeddedTritonServer":
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        process = self.launch(log)
        timeout_s = self.startup_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {process.returncode}; see {self.log_path}")
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"tritonserver not ready after {timeout_s:.0f} s; see {self.log_path}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGINT, grace_s: float = 30.0) -> None:
        """Send ``sig`` to the server's process group, wait ``grace_s``, then SIGKILL what is left."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process is not None and self.process.poll() is not None:
            remove_tables(self.process.pid)  # its sampling loops' step-barrier tables (t2vserve.step_barrier)
            remove_shm_regions(self.shm_prefix)
        if self._backend_dir:
            shutil.rmtree(self._backend_dir, ignore_errors=True)
            self._backend_dir = None

    def __enter__(self) -> "EmbeddedTritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: Exit status of ``serve`` when it stopped tritonserver because a Python-backend stub process died.
EXIT_STUB_LOST = 70
STUB_CHECK_INTERVAL_S = 2.0


class StubWatch:
    """Whether every Python-backend instance of ``server`` still has its stub (expected counts read once ready)."""

    def __init__(self, server: EmbeddedTritonServer, pid: int) -> None:
        self.server, self.pid = server, pid
        self.expected: dict[str, int] | None = None
        self.next_check = 0.0

    def lost(self) -> str | None:
        """What was lost (e.g. "scheduler: 3 of 4 stub processes alive"), checked at most every STUB_CHECK_INTERVAL_S."""
        if time.monotonic() < self.next_check:
            return None
        self.next_check = time.monotonic() + STUB_CHECK_INTERVAL_S
        if self.expected is None:
            if self.server.ready():
                try:
                    self.expected = health.expected_stubs(
                        self.server.http_url, health.repository_models(self.server.model_repository)
                    )
                except OSError:
                    return None  # asked again at the next check
                print(f"ready; watching {sum(self.expected.values())} Python-backend stub processes", flush=True)
            return None
        missing = health.missing_stubs(self.pid, self.expected)
        return health.describe(missing) if missing else None


def serve(server: EmbeddedTritonServer, watch_stubs: bool = True) -> int:
    """Run ``server`` in the foreground until it exits, or until SIGTERM/SIGINT, which it forwards and waits for.

    Returns tritonserver's exit status (0 after a clean shutdown on a signal), or ``EXIT_STUB_LOST``
    after stopping it because a Python-backend stub died (``watch_stubs``).
    """
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in STOP_SIGNALS}
    log = open(server.log_path, "wb") if server.log_path else None
    try:
        process = server.launch(log, die_with_parent=True)
        print(f"tritonserver pid {process.pid}; listening on {server.host}", flush=True)
        watch = StubWatch(server, process.pid) if watch_stubs else None
        while not received and process.poll() is None:
            try:
                process.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            lost = watch.lost() if watch is not None and process.poll() is None else None
            if lost:
                print(
                    f"Python-backend stub lost ({lost}); Triton 2.51 neither restarts it nor reports the model not "
                    "ready, so requests to it would fail: stopping tritonserver", flush=True,
                )  # fmt: skip
                server.stop(signal.SIGTERM)
                return EXIT_STUB_LOST
        if received:
            print(f"signal {signal.Signals(received[0]).name}: stopping tritonserver", flush=True)
            server.stop(received[0])
        code = process.returncode
        return code if code >= 0 else 128 - code
    finally:
        server.stop()
        if log is not None:
            log.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the model repository on the embedded tritonserver")
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--runner", choices=sorted(RUNNER_CONFIG_NAMES), default="onnxruntime")
    parser.add_argument(
        "--host", default=None,
        help=f"interface to listen on (default: ${SERVER_HOST_ENV}, else {LOOPBACK}: this machine only; "
        "0.0.0.0: every one)",
    )
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--log", type=Path, default=None, help="server log file (default: stdout)")
    parser.add_argument(
        "--keep-serving-on-stub-loss", action="store_true",
        help=f"do not stop tritonserver (exit {EXIT_STUB_LOST}) when a Python-backend stub process dies",
    )  # fmt: skip
    args = parser.parse_args(argv)
    server = EmbeddedTritonServer(
        args.model_repository, args.runner, args.http_port, args.grpc_port, args.metrics_port, args.log,
        host=args.host or server_host(),
    )
    print(" ".join(server.command()), flush=True)
    return serve(server, watch_stubs=not args.keep_serving_on_stub_loss)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m t2vserve.server``: listens on loopback by default and never leaves tritonserver behind.

A real launcher process serves a one-model repository (the Python-backend ``postprocess`` entry, so a
backend stub process is part of the server's process group too).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from t2vserve.hostcheck import cuda_device_count
from t2vserve.repository import render_repository
from t2vserve.server import SHM_DIR, EmbeddedTritonServer, free_port, model_config_name
from t2vserve.settings import COMPILE_CACHE_ENV, LOOPBACK, SERVER_HOST_ENV
from t2vserve.spec import POSTPROCESS_INSTANCES

READY_TIMEOUT_S = 120


def _one_model_repository(root: Path) -> Path:
    for rel, text in render_repository().items():
        if rel.startswith("postprocess/"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    return root


def _processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, parent pid, process group) of every process, from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        found[int(stat.parent.name)] = (state, int(ppid), int(pgrp))
    return found


def _children(pid: int) -> list[int]:
    return [child for child, (_, ppid, _) in _processes().items() if ppid == pid]


def _alive(pid: int) -> bool:
    """Whether process ``pid``, or any process of the group it leads (its backend stubs), still runs."""
    return any(state != "Z" and pid in (p, pgrp) for p, (state, _, pgrp) in _processes().items())


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _listen_addresses(port: int) -> set[str]:
    """IPv4 addresses with a listening TCP socket on ``port``, from /proc/net/tcp and tcp6 (gRPC binds
    IPv4-mapped IPv6 sockets): ``::`` counts as ``0.0.0.0``, ``::ffff:a.b.c.d`` as ``a.b.c.d``."""
    addresses = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(address_hex)  # 32-bit words in host (little-endian) order
            address = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
            if isinstance(address, ipaddress.IPv6Address):
                address = address.ipv4_mapped or (ipaddress.IPv4Address(0) if address.is_unspecified else address)
            addresses.add(str(address))
    return addresses


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/v2/health/ready", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.mark.server
@pytest.mark.parametrize(
    "sig,host", [(signal.SIGTERM, None), (signal.SIGKILL, "0.0.0.0")], ids=["SIGTERM-loopback", "SIGKILL-host-flag"]
)
def test_stopped_launcher_leaves_no_tritonserver(tmp_path, sig, host) -> None:
    """SIGTERM is forwarded and waited for; even a SIGKILLed launcher takes tritonserver with it."""
    repository = _one_model_repository(tmp_path / "repo")
    ports = [free_port() for _ in range(3)]
    env = {k: v for k, v in os.environ.items() if k != SERVER_HOST_ENV}
    command = [sys.executable, "-m", "t2vserve.server", "--model-repository", str(repository)]
    command += ["--log", str(tmp_path / "log")]
    command += [f"--{kind}-port={port}" for kind, port in zip(("http", "grpc", "metrics"), ports)]
    command += ["--host", host] if host else []
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server, backend_dir = 0, None
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(ports[0]):
            assert launcher.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()[-2000:]
            time.sleep(0.2)
        (server,) = _children(launcher.pid)
        argv = Path(f"/proc/{server}/cmdline").read_bytes().decode().split("\0")
        assert Path(argv[0]).name == "tritonserver"
        backend_dir = next(a.split("=", 1)[1] for a in argv if a.startswith("--backend-directory="))
        listening = [_listen_addresses(port) for port in ports]
        assert listening == [{host or LOOPBACK}] * 3, listening

        launcher.send_signal(sig)
        code = launcher.wait(timeout=60)
        if sig == signal.SIGTERM:
            assert code == 0  # tritonserver shut down cleanly before the launcher returned
            assert not _alive(server), "the launcher returned before tritonserver (or its stub) was gone"
        deadline = time.monotonic() + 30  # SIGKILL: the kernel sent tritonserver SIGTERM; allow its exit timeout
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server), "tritonserver (or its backend stub) outlived the launcher"
        assert not any(_port_open(port) for port in ports)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in [server] if server else _children(launcher.pid):
            for kill in (os.killpg, os.kill):  # the group (stubs included), or the process alone
                try:
                    kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if backend_dir and sig == signal.SIGKILL:  # the launcher had no chance to remove it
            shutil.rmtree(backend_dir, ignore_errors=True)


@pytest.mark.server
def test_a_killed_server_leaves_no_shared_memory_regions(tmp_path) -> None:
    """The Python backend's regions carry the server's own prefix. A tritonserver killed with its stubs (SIGKILL: the
    OOM killer, ``docker kill``) cannot unlink them, 16 MB a stub; stop() removes every one under the prefix."""
    repository = _one_model_repository(tmp_path / "repo")
    server = EmbeddedTritonServer(repository, log_path=tmp_path / "log").start(READY_TIMEOUT_S)
    try:
        regions = list(SHM_DIR.glob(f"{server.shm_prefix}*"))
        assert len(regions) >= POSTPROCESS_INSTANCES, regions  # a region per stub, under this server's prefix
        assert server.process is not None
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
        assert all(region.exists() for region in regions)  # what a killed server leaves behind
    finally:
        server.stop()
    assert not list(SHM_DIR.glob(f"{server.shm_prefix}*"))


def test_listens_on_loopback_unless_told_otherwise(monkeypatch) -> None:
    def addresses(server: EmbeddedTritonServer) -> set[str]:
        try:
            flags = server.command()
        finally:
            server.stop()
        return {f.split("=", 1)[1] for f in flags if f.split("=", 1)[0].endswith("-address")}

    monkeypatch.delenv(SERVER_HOST_ENV, raising=False)
    assert addresses(EmbeddedTritonServer()) == {LOOPBACK}
    assert EmbeddedTritonServer().grpc_url.startswith(f"{LOOPBACK}:")
    monkeypatch.setenv(SERVER_HOST_ENV, "0.0.0.0")
    server = EmbeddedTritonServer()
    assert addresses(server) == {"0.0.0.0"} and server.http_url.startswith(f"{LOOPBACK}:")
    assert addresses(EmbeddedTritonServer(host="10.1.2.3")) == {"10.1.2.3"}


def test_the_torch_runner_gets_its_cpu_config_set_where_cuda_is_absent() -> None:
    """Triton refuses KIND_GPU instances without a GPU: the launcher serves the torch runner's CPU set there
    (configs/torch-cpu.pbtxt, the sampling loops KIND_CPU); the other runners have one set each."""
    def config_flags(runner: str, cuda: bool) -> list[str]:
        server = EmbeddedTritonServer(runner=runner, cuda=cuda)
        try:
            return [flag for flag in server.command() if flag.startswith("--model-config-name")]
        finally:
            server.stop()

    assert config_flags("torch", cuda=False) == ["--model-config-name=torch-cpu"]
    assert config_flags("torch", cuda=True) == ["--model-config-name=torch"]
    assert config_flags("onnxruntime", cuda=True) == config_flags("onnxruntime", cuda=False) == ["--model-config-name=onnxruntime"]
    assert config_flags("tensorrt", cuda=True) == []  # each entry's config.pbtxt
    expected = "torch" if cuda_device_count() else "torch-cpu"  # the launcher asks the CUDA driver
    assert EmbeddedTritonServer(runner="torch").config_name() == expected
    with pytest.raises(ValueError, match="runner must be one of"):
        model_config_name("tensorflow", cuda=True)


def test_compile_cache_directory_reaches_the_server_environment(monkeypatch, tmp_path) -> None:
    """T2V_COMPILE_CACHE_DIR puts torch.compile's caches (Inductor, Triton kernels) under it for the stubs;
    an explicit TORCHINDUCTOR_CACHE_DIR wins; unset, torch keeps its defaults."""
    for name in (COMPILE_CACHE_ENV, "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert "TORCHINDUCTOR_CACHE_DIR" not in EmbeddedTritonServer().environment()
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path))
    env = EmbeddedTritonServer().environment()
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor") and env["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
    assert env["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    assert EmbeddedTritonServer().environment()["TORCHINDUCTOR_CACHE_DIR"] == "/elsewhere"


@pytest.mark.server
def test_launcher_stops_tritonserver_when_a_stub_dies(tmp_path) -> None:
    """Triton 2.51 neither restarts a dead Python-backend stub nor marks its model not ready: the launcher
    notices, stops tritonserver and exits EXIT_STUB_LOST (for a supervisor to restart it)."""
    from t2vserve import procs
    from t2vserve.server import EXIT_STUB_LOST

    repository = _one_model_repository(tmp_path / "repo")
    ports = [free_port() for _ in range(3)]
    command = [sys.executable, "-m", "t2vserve.server", "--model-repository", str(repository)]
    command += ["--log", str(tmp_path / "log")]
    command += [f"--{kind}-port={port}" for kind, port in zip(("http", "grpc", "metrics"), ports)]
    output = tmp_path / "launcher.out"
    with open(output, "wb") as out:
        launcher = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server = 0
    try:
        count = POSTPROCESS_INSTANCES  # the repository's one model, one stub per instance
        watching = lambda: f"watching {count} Python-backend stub processes" in output.read_text()  # noqa: E731
        assert procs.wait_for(lambda: watching() or launcher.poll() is not None, READY_TIMEOUT_S), output.read_text()
        assert watching(), output.read_text()
        (server,) = _children(launcher.pid)
        stubs = sorted(procs.stubs(server))
        assert len(stubs) == count and procs.kill(stubs[0])
        code = launcher.wait(timeout=60)
        assert code == EXIT_STUB_LOST, output.read_text()
        assert f"Python-backend stub lost (postprocess: {count - 1} of {count} stub processes alive)" in output.read_text()
        assert not _alive(server) and not any(_port_open(port) for port in ports)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if server:
            for kill in (os.killpg, os.kill):
                try:
                    kill(server, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_torch_compile_mode_env_overrides_the_entry_config(monkeypatch) -> None:
    """T2V_TORCH_COMPILE replaces every entry's ``compile`` parameter (e.g. none: serve eagerly); a typo is refused."""
    from t2vserve.settings import TORCH_COMPILE_ENV, torch_compile_mode

    monkeypatch.delenv(TORCH_COMPILE_ENV, raising=False)
    assert torch_compile_mode("default") == "default" and torch_compile_mode("") == "none"
    monkeypatch.setenv(TORCH_COMPILE_ENV, "none")
    assert torch_compile_mode("default") == "none"
    monkeypatch.setenv(TORCH_COMPILE_ENV, "fast")
    with pytest.raises(ValueError, match="T2V_TORCH_COMPILE.*'fast'.*allowed: none, default"):
        torch_compile_mode("default")


def test_the_stubs_library_path_adds_libpython_alone() -> None:
    """The stub links libpython, so the stubs' LD_LIBRARY_PATH gets a directory holding that library only, never
    sysconfig's LIBDIR: on Ubuntu's Python that is /usr/lib/x86_64-linux-gnu, whose cuDNN shadowed the one torch ships
    (GPU round 6). Every test that starts a server checks that the stubs still load with it."""
    import sysconfig

    from t2vserve.server import python_library_dir

    added = EmbeddedTritonServer().environment()["LD_LIBRARY_PATH"].split(os.pathsep)[:2]
    libpython = python_library_dir()
    assert libpython is not None and added[1] == libpython and sysconfig.get_config_var("LIBDIR") not in added
    (link,) = Path(libpython).iterdir()
    assert link.name == sysconfig.get_config_var("INSTSONAME")
    assert link.resolve() == (Path(sysconfig.get_config_var("LIBDIR")) / link.name).resolve()

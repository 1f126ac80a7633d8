"""Faults: a Python-backend stub process killed mid-request, on a dedicated server (the kill damages it).

What these tests pin down is Triton 2.51's own behaviour (its Python backend, r24.10), documented in
README "Faults": the request in flight fails with "Stub process '<instance>' is not healthy." within
seconds; the stub is not restarted and the model and server stay READY, so every later request routed
to that instance fails the same way (quickly) while the other instances keep serving; a streamed
(decoupled) request whose stub dies gets no final response at all and ends at the client's timeout.
``t2vserve.health`` notices the lost stub where readiness does not.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from t2vserve import health, procs
from t2vserve.client import GenerationRequest, GenerationResult, Progress, T2VClient
from t2vserve.server import EmbeddedTritonServer

PROMPT = "a red circle moving to the right on a black background"
LONG_STEPS = 60  # about 20 s on 2 CPU cores: long enough to be killed mid-loop
CLIENT_TIMEOUT_S = 60.0
ERROR_WITHIN_S = 15.0  # the killed request's error arrives well before the client timeout
STREAM_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def fault_server(repository, tmp_path_factory):
    """Its own tritonserver (verbose log: it names the instance executing a request)."""
    log = tmp_path_factory.mktemp("fault-server") / "tritonserver.log"
    with EmbeddedTritonServer(repository, log_path=log, verbose=True) as srv:
        yield srv


def _instance_executing(log: Path, model: str, offset: int) -> str | None:
    """The instance of ``model`` that the Python backend last logged as executing (after ``offset``)."""
    with open(log, "rb") as f:
        f.seek(offset)
        found = re.findall(rf"model {model}, instance ({model}_\d+_\d+), executing".encode(), f.read())
    return found[-1].decode() if found else None


def _stub_of(server_pid: int, instance: str) -> int:
    (pid,) = [pid for pid in procs.stubs(server_pid) if instance in procs.argv(pid)]
    return pid


def _model_ready(server: EmbeddedTritonServer, model: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/ready", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def test_a_killed_stub_fails_its_request_and_is_not_restarted(fault_server) -> None:
    server_pid = fault_server.process.pid
    expected = health.expected_stubs(fault_server.http_url, health.repository_models(fault_server.model_repository))
    instances = expected["scheduler"]
    assert instances > 1 and health.problems(fault_server.http_url, server_pid) == []

    outcome: dict[str, object] = {}

    def long_request() -> None:
        with T2VClient(fault_server.grpc_url, timeout_s=CLIENT_TIMEOUT_S) as client:
            try:
                outcome["result"] = client.generate(GenerationRequest(PROMPT, seed=5, steps=LONG_STEPS))
            except Exception as exc:
                outcome["error"] = exc
            outcome["at"] = time.monotonic()

    offset = fault_server.log_path.stat().st_size
    request = threading.Thread(target=long_request)
    request.start()
    assert procs.wait_for(lambda: _instance_executing(fault_server.log_path, "scheduler", offset), 30)
    instance = _instance_executing(fault_server.log_path, "scheduler", offset)
    time.sleep(2)  # well inside its denoising loop
    assert procs.kill(_stub_of(server_pid, instance))
    killed_at = time.monotonic()
    request.join(CLIENT_TIMEOUT_S + 30)
    assert not request.is_alive()

    error = outcome.get("error")
    assert isinstance(error, InferenceServerException), outcome  # an error, not a clip, not a hang
    assert f"Stub process '{instance}' is not healthy" in error.message() and "INTERNAL" in str(error.status())
    assert outcome["at"] - killed_at < ERROR_WITHIN_S  # type: ignore[operator]

    # Triton 2.51: no restart, still READY, later requests to the dead instance fail fast, the others serve.
    time.sleep(5)
    alive = [pid for pid, model in procs.stubs(server_pid).items() if model == "scheduler"]
    assert len(alive) == instances - 1
    assert fault_server.ready() and _model_ready(fault_server, "scheduler")
    failures, successes = [], 0
    with T2VClient(fault_server.grpc_url, timeout_s=CLIENT_TIMEOUT_S) as client:
        for seed in range(3 * instances):
            sent = time.monotonic()
            try:
                assert isinstance(client.generate(GenerationRequest(PROMPT, seed=seed, steps=1)), GenerationResult)
                successes += 1
            except InferenceServerException as exc:
                failures.append((exc.message(), time.monotonic() - sent))
            if successes and failures:
                break
    assert successes and failures, (successes, failures)
    for message, seconds in failures:
        assert f"Stub process '{instance}' is not healthy" in message and seconds < 5, (message, seconds)

    # what readiness misses, t2vserve.health reports (library and CLI)
    lost = f"scheduler: {instances - 1} of {instances} stub processes alive"
    (problem,) = health.problems(fault_server.http_url, server_pid)
    assert lost in problem
    command = [sys.executable, "-m", "t2vserve.health", "--url", fault_server.http_url, "--pid", str(server_pid)]
    probe = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 1 and lost in probe.stderr, probe


def test_a_stream_whose_stub_dies_ends_only_at_the_client_timeout(fault_server) -> None:
    """A decoupled request never gets a final response once its stub is gone (2.51): only the client's
    per-event timeout ends it. Later streams fail at once."""
    server_pid = fault_server.process.pid
    with T2VClient(fault_server.grpc_url, timeout_s=STREAM_TIMEOUT_S) as client:
        events = client.stream(GenerationRequest(PROMPT, seed=6, steps=LONG_STEPS))
        assert isinstance(next(events), Progress)  # running
        (stub,) = [pid for pid, model in procs.stubs(server_pid).items() if model == "t2v_stream"]
        assert procs.kill(stub)
        killed_at = time.monotonic()
        with pytest.raises(TimeoutError, match="no response from t2v_stream"):
            for _ in events:
                pass
        waited = time.monotonic() - killed_at
        assert STREAM_TIMEOUT_S - 1 < waited < STREAM_TIMEOUT_S + 15, waited

        sent = time.monotonic()
        with pytest.raises(InferenceServerException, match="Stub process 't2v_stream_0_0' is not healthy"):
            list(client.stream(GenerationRequest(PROMPT, seed=7, steps=1)))
        assert time.monotonic() - sent < 5
    assert fault_server.ready() and _model_ready(fault_server, "t2v_stream")

"""Shared fixtures: the tiny model, an exported repository, and one real tritonserver per session."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from t2vserve.client import T2VClient
from t2vserve.export import export_model, trained_model_dir
from t2vserve.families import get_family
from t2vserve.server import EmbeddedTritonServer
from t2vserve.geometry import GEOMETRY_FILE, ModelGeometry
from t2vserve.step_cache import STEP_METRICS, read_step_metrics


TEST_CALIBRATION_PROMPTS = 2


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The suite's served model: the tiny unet3d demo model the project trained and ships (read only)."""
    directory = trained_model_dir("unet3d")
    assert directory is not None, "the trained demo model t2vserve/data/trained/unet3d is missing"
    return directory


@pytest.fixture(scope="session")
def components(tiny_model_dir):
    return get_family("unet3d").components(tiny_model_dir)


@pytest.fixture(scope="session")
def repository(tiny_model_dir, tmp_path_factory) -> Path:
    """A model repository (generated configs, equal to the committed ones) with the tiny model exported."""
    root = tmp_path_factory.mktemp("repo") / "model_repository"
    # Two of the eight calibration prompts keep the suite fast; `make quality` uses the full recipe.
    export_model(tiny_model_dir, root, "tiny", calibration_prompts=TEST_CALIBRATION_PROMPTS)
    return root


@pytest.fixture(scope="session")
def geometry(repository) -> ModelGeometry:
    return ModelGeometry.load(repository / "scheduler" / "1" / GEOMETRY_FILE)


@pytest.fixture(scope="session")
def server(repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    with EmbeddedTritonServer(repository, log_path=log) as srv:
        yield srv
    if srv.process is not None and srv.process.returncode not in (0, None):
        print(log.read_text()[-4000:])


@pytest.fixture(scope="session", params=["grpc", "http"])
def client(request, server):
    url = server.grpc_url if request.param == "grpc" else server.http_url
    with T2VClient(url, request.param) as c:
        yield c


@pytest.fixture(scope="session")
def grpc_client(server):
    with T2VClient(server.grpc_url, "grpc") as c:
        yield c


def _step_metrics(server: EmbeddedTritonServer) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        values = read_step_metrics(response.read().decode())
    assert {field for field, _ in values} == set(STEP_METRICS), f"step metrics missing on {server.metrics_url}"
    return values


@pytest.fixture(scope="session")
def measure_steps() -> Callable[..., tuple[Any, int, int, int]]:
    """``measure(server, run, model, entry)``: (what ``run()`` returns, executions of the denoiser ``entry``
    meanwhile, and the steps and skipped steps that the metrics of the loop ``model`` counted meanwhile)."""
    from t2vserve.demo import stage_times

    def measure(server: EmbeddedTritonServer, run: Callable[[], Any], model: str, entry: str) -> tuple[Any, int, int, int]:
        stats, metrics = stage_times(server.grpc_url), _step_metrics(server)
        out = run()
        stats_after, metrics_after = stage_times(server.grpc_url), _step_metrics(server)
        steps, skipped = (int(metrics_after.get((f, model), 0.0) - metrics.get((f, model), 0.0)) for f in ("steps", "skipped"))
        return out, stats_after[entry][0] - stats[entry][0], steps, skipped

    return measure

"""GPU-host deployment files: docker-compose.yml (schema facts, `docker compose config` where the CLI is),
the NGC tag pinned once (.env == Dockerfile), and the services' commands as the README states them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from tritonclient.utils import InferenceServerException

from t2vserve.engines import NGC_TENSORRT
from t2vserve.hostcheck import admin_key_refusal
from t2vserve.server import REPO_ROOT, EmbeddedTritonServer

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
NVIDIA_ENTRYPOINT = "/opt/nvidia/nvidia_entrypoint.sh"
BUILD_ENGINES = ["python", "build/build_engines.py", "--repository", "/models"]

#: Top-level and service keys of the Compose Specification (a typo or a misplaced key is an error).
TOP_LEVEL_KEYS = {"name", "services", "volumes", "networks", "configs", "secrets", "include", "models"}
SERVICE_KEYS = set(
    """annotations attach build blkio_config cap_add cap_drop cgroup cgroup_parent command configs container_name
    cpu_count cpu_percent cpu_period cpu_quota cpu_rt_period cpu_rt_runtime cpu_shares cpus cpuset credential_spec
    depends_on deploy develop device_cgroup_rules devices dns dns_opt dns_search domainname entrypoint env_file
    environment expose extends external_links extra_hosts gpus group_add healthcheck hostname image init ipc isolation
    labels links logging mac_address mem_limit mem_reservation mem_swappiness memswap_limit network_mode networks
    oom_kill_disable oom_score_adj pid pids_limit platform ports privileged profiles pull_policy read_only restart
    runtime scale secrets security_opt shm_size stdin_open stop_grace_period stop_signal storage_opt sysctls tmpfs tty
    ulimits user userns_mode uts volumes volumes_from working_dir""".split()
)
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _env_file() -> dict[str, str]:
    lines = (REPO_ROOT / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (REPO_ROOT / "Dockerfile").read_text(), re.M))


def _commands(service: dict) -> list[list[str]]:
    """The service's entrypoint (without NVIDIA's wrapper script) and command, each as a list."""
    entrypoint = list(service.get("entrypoint") or [])
    if entrypoint[:1] == [NVIDIA_ENTRYPOINT]:
        entrypoint = entrypoint[1:]
    return [part for part in (entrypoint, list(service.get("command") or [])) if part]


def test_compose_schema(compose) -> None:
    assert set(k for k in compose if not k.startswith("x-")) <= TOP_LEVEL_KEYS
    assert set(compose["services"]) == {"engines", "triton", "triton-torch", "perf"}
    named_volumes = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        unknown = set(service) - SERVICE_KEYS
        assert not unknown, f"{name}: keys not in the Compose Specification: {unknown}"
        assert "image" in service or "build" in service, name
        for command in _commands(service):
            assert all(isinstance(arg, str) and arg and not re.search(r"\s", arg) for arg in command), (name, command)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "$")):
                assert source in named_volumes, f"{name}: volume {source} is not declared"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in compose["services"] and condition["condition"] in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }


def test_engines_export_and_build_into_the_served_volume(compose) -> None:
    engines, triton = compose["services"]["engines"], compose["services"]["triton"]
    (entrypoint,) = _commands(engines)
    assert entrypoint[: len(BUILD_ENGINES)] == BUILD_ENGINES and "--check" not in entrypoint
    assert "--export-from" in entrypoint and "--timing-cache" in entrypoint
    assert "models:/models" in engines["volumes"] and "models:/models:ro" in triton["volumes"]
    assert engines["image"] == triton["image"] and engines["build"] == triton["build"]
    assert "ports" not in engines


def test_triton_refuses_stale_plans_then_serves(compose) -> None:
    triton = compose["services"]["triton"]
    check, server = _commands(triton)
    assert check == BUILD_ENGINES + ["--check", "--"]
    assert triton["entrypoint"][0] == NVIDIA_ENTRYPOINT
    assert server[0] == "tritonserver" and "--model-repository=/models" in server
    assert "--model-control-mode=none" in server
    restricted = {flag.split("=", 1)[0]: flag.split("=", 1)[1] for flag in server if "restricted" in flag}
    assert set(restricted) == {"--http-restricted-api", "--grpc-restricted-protocol"}
    for value in restricted.values():
        apis, header = value.split(":", 1)
        assert {"model-repository", "shared-memory"} <= set(apis.split(","))
        assert not {"inference", "health", "metadata", "model-config", "statistics"} & set(apis.split(","))
        assert header == "triton-admin-key=${TRITON_ADMIN_KEY:-}"
    assert triton["environment"]["TRITON_ADMIN_KEY"] == "${TRITON_ADMIN_KEY:-}"


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation for the forms this file may use: ``${VAR}``, ``${VAR:-default}``, ``$$``."""
    pattern = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")
    out = pattern.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text.replace("$$", "\0"))
    assert "${" not in out, f"interpolation this test does not model: {out}"
    return out.replace("\0", "$")


def test_unset_admin_key_breaks_only_the_triton_service(compose) -> None:
    """Compose interpolates the whole file for every command: a required ``${TRITON_ADMIN_KEY:?}`` would stop
    `docker compose run engines` too. Unset, the key is empty, and triton's --check refuses the command."""
    assert not re.search(r"\$\{\w+:?\?", COMPOSE_FILE.read_text()), "a required variable breaks every service"
    _, server = _commands(compose["services"]["triton"])
    unset = [_interpolate(arg, {}) for arg in server]
    refusal = admin_key_refusal(unset)
    assert refusal is not None and "TRITON_ADMIN_KEY" in refusal
    assert admin_key_refusal([_interpolate(arg, {"TRITON_ADMIN_KEY": "k3y"}) for arg in server]) is None
    (engines,) = _commands(compose["services"]["engines"])
    assert all("TRITON_ADMIN_KEY" not in arg for arg in engines)


@pytest.mark.server
def test_readme_admin_headers_unlock_the_restricted_apis(compose, tmp_path) -> None:
    """The compose service's restricted-API flags on the real tritonserver (no models): the headers the
    README names unlock the model-repository API over HTTP and gRPC; without them it is refused."""
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    stated = {p: re.search(rf"`([\w-]+): \$TRITON_ADMIN_KEY` over {p}", readme) for p in ("HTTP", "gRPC")}
    assert all(stated.values()), "README.md (GPU host) names no admin header for HTTP or gRPC"
    headers = {protocol: match.group(1) for protocol, match in stated.items()}
    key = "k3y-0f-test"
    _, server = _commands(compose["services"]["triton"])
    restricted = tuple(_interpolate(arg, {"TRITON_ADMIN_KEY": key}) for arg in server if "restricted" in arg)
    (tmp_path / "models").mkdir()
    with EmbeddedTritonServer(tmp_path / "models", extra_args=restricted, log_path=tmp_path / "log") as triton:
        for module, url, header in (
            (httpclient, triton.http_url, headers["HTTP"]),
            (grpcclient, triton.grpc_url, headers["gRPC"]),
        ):
            client = module.InferenceServerClient(url)
            with pytest.raises(InferenceServerException, match="restricted"):
                client.get_model_repository_index()
            with pytest.raises(InferenceServerException, match="restricted"):
                client.get_model_repository_index(headers={header: "wrong"})
            client.get_model_repository_index(headers={header: key})  # unlocked
            assert client.is_server_ready()  # open without a header
            client.close()


def test_triton_shares_the_embedded_servers_settings(compose) -> None:
    embedded = EmbeddedTritonServer()
    try:
        flags = embedded.command()
    finally:
        embedded.stop()
    # not the launcher's own shared-memory prefix (what its stop() removes): a container's /dev/shm goes with it
    shared = [
        f
        for f in flags
        if f.split("=", 1)[0] in {"--model-control-mode", "--exit-on-error", "--allow-metrics", "--backend-config"}
        and "shm-region-prefix-name" not in f
    ]
    assert len(shared) == 5
    _, server = _commands(compose["services"]["triton"])
    assert [f for f in shared if f not in server] == []


def test_triton_ports_gpu_and_health(compose) -> None:
    triton = compose["services"]["triton"]
    assert triton["ports"] == ["8000:8000", "8001:8001", "8002:8002"]
    for name in ("engines", "triton"):
        (device,) = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == 1
    health = triton["healthcheck"]
    assert set(health) <= HEALTHCHECK_KEYS and health["test"][0] == "CMD"
    assert health["test"][1:] == ["python", "-m", "t2vserve.health", "--url", "localhost:8000"]  # readiness + stubs
    assert triton["depends_on"] == {"engines": {"condition": "service_completed_successfully"}}


def test_torch_profile_serves_the_torch_runner_with_a_persistent_compile_cache(compose, monkeypatch) -> None:
    """triton-torch: the triton service's server on the torch runner's configs, its torch.compile caches in a
    named volume (the variables the embedded server sets for T2V_COMPILE_CACHE_DIR), the weights the export
    recorded mounted, other host ports so both services can run."""
    from t2vserve.server import RUNNER_CONFIG_NAMES
    from t2vserve.settings import COMPILE_CACHE_ENV, compile_cache_environment

    triton, torch_service = compose["services"]["triton"], compose["services"]["triton-torch"]
    assert torch_service["profiles"] == ["torch"] and torch_service["image"] == triton["image"]
    check, server = _commands(torch_service)
    triton_check, triton_server = _commands(triton)
    assert check == triton_check
    assert f"--model-config-name={RUNNER_CONFIG_NAMES['torch']}" in server
    assert [flag for flag in server if not flag.startswith("--model-config-name")] == triton_server
    cache_volume = next(v for v in torch_service["volumes"] if v.startswith("torch-compile-cache:"))
    root = cache_volume.split(":")[1]
    monkeypatch.setenv(COMPILE_CACHE_ENV, root)
    assert {k: torch_service["environment"][k] for k in compile_cache_environment()} == compile_cache_environment()
    assert "torch-compile-cache" in compose["volumes"]
    assert any(v.endswith(":/weights:ro") for v in torch_service["volumes"])
    published = {port.split(":")[0] for port in torch_service["ports"]}
    assert not published & {port.split(":")[0] for port in triton["ports"]}
    assert torch_service["healthcheck"]["test"] == triton["healthcheck"]["test"]


def test_perf_profile_runs_perf_analyzer_from_the_sdk_image(compose) -> None:
    perf = compose["services"]["perf"]
    assert perf["profiles"] == ["perf"]
    assert perf["image"] == "nvcr.io/nvidia/tritonserver:${TRITON_IMAGE_TAG}-sdk"
    assert perf["depends_on"] == {"triton": {"condition": "service_healthy"}}
    (command,) = _commands(perf)
    assert command[:2] == ["python3", "client/perf_sweep.py"]
    assert command[command.index("--url") + 1] == "triton:8001"
    assert (REPO_ROOT / command[command.index("--input-data") + 1]).exists()


def test_ngc_tag_is_pinned_once() -> None:
    tag = _env_file()["TRITON_IMAGE_TAG"]
    args = _dockerfile_args()
    assert args["TRITON_IMAGE_TAG"] == tag, "Dockerfile ARG TRITON_IMAGE_TAG and .env disagree"
    assert re.search(
        r"^FROM nvcr\.io/nvidia/tritonserver:\$\{TRITON_IMAGE_TAG\}$", (REPO_ROOT / "Dockerfile").read_text(), re.M
    )
    release = tag.split("-")[0]
    assert args["TENSORRT_VERSION"] == NGC_TENSORRT[release], (
        f"TensorRT of NGC {release} is {NGC_TENSORRT.get(release)}"
    )
    text = COMPOSE_FILE.read_text()
    assert re.findall(r"nvcr\.io/nvidia/tritonserver:[^\s\"']+", text) == [
        "nvcr.io/nvidia/tritonserver:${TRITON_IMAGE_TAG}-sdk"
    ]
    assert "TRITON_IMAGE_TAG: ${TRITON_IMAGE_TAG}" in text


def test_dockerfile_copies_what_the_services_run(compose) -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    for path in ("t2vserve", "export", "build", "client"):
        assert re.search(rf"^COPY {path} \./{path}$", dockerfile, re.M), path
    assert "RUN python build/build_engines.py --tensorrt-info" in dockerfile


def _docker_compose() -> list[str] | None:
    if shutil.which("docker") is None:
        return None
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    return ["docker", "compose"] if probe.returncode == 0 else None


def test_docker_compose_config_validates() -> None:
    cli = _docker_compose()
    if cli is None:
        pytest.skip("no `docker compose` CLI here: the schema checks above stand in for it")
    env = {**os.environ, "TRITON_ADMIN_KEY": "test-key"}
    result = subprocess.run(
        cli + ["--project-directory", str(REPO_ROOT), "--profile", "perf", "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert set(resolved["services"]) == {"engines", "triton", "perf"}  # triton-torch: profile torch
    assert "triton-admin-key=test-key" in " ".join(resolved["services"]["triton"]["command"])
    env.pop("TRITON_ADMIN_KEY")  # unset: compose (so `run engines`) works, triton's --check refuses the empty key
    config = cli + ["config", "--format", "json"]
    result = subprocess.run(config, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert admin_key_refusal(json.loads(result.stdout)["services"]["triton"]["command"]) is not None


def test_service_commands_appear_verbatim_in_the_readme(compose) -> None:
    # verbatim, except that the README may wrap a long command with shell line continuations (" \\" + newline)
    readme = re.sub(r" \\\n\s*", " ", (REPO_ROOT / "README.md").read_text())
    missing = [
        f"{name}: {' '.join(command)}"
        for name, service in compose["services"].items()
        for command in _commands(service)
        if " ".join(command) not in readme
    ]
    assert not missing, "README.md (section GPU host) does not state these commands:\n" + "\n".join(missing)

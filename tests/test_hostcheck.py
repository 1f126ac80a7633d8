"""Host checks of `build_engines.py --check` (t2vserve/hostcheck.py): driver version and admin key."""

from __future__ import annotations

import pytest

from t2vserve.hostcheck import admin_key_refusal, driver_status, parse_driver_versions


def test_driver_versions_are_read_from_nvidia_smi_csv() -> None:
    assert parse_driver_versions("580.65.06\n") == [(580, 65, 6)]
    assert parse_driver_versions("575.57.08\n580.82.07\n") == [(575, 57, 8), (580, 82, 7)]
    assert parse_driver_versions("[N/A]\n") == [] and parse_driver_versions("") == []


@pytest.mark.parametrize(
    "output,ok",
    [("580.65.06\n", True), ("590.44.01\n", True), ("575.57.08\n", False), ("535.247.01\n", False),
     ("580.65.06\n570.86.15\n", False), (None, True), ("No devices were found\n", True)],
)
def test_driver_older_than_r580_is_refused(output: str | None, ok: bool) -> None:
    go_on, message = driver_status(output)
    assert go_on is ok
    if not ok:
        assert message.startswith("error:") and "CUDA 13" in message and "R580" in message
        assert min(parse_driver_versions(output or "")) == tuple(int(p) for p in message.split()[3].split("."))
    elif output is None or not parse_driver_versions(output):
        assert "not checked" in message


def test_empty_admin_key_is_refused() -> None:
    flag = "--grpc-restricted-protocol=model-repository,shared-memory:triton-admin-key="
    assert admin_key_refusal(["tritonserver", "--model-repository=/models", flag + "s3cret"]) is None
    refusal = admin_key_refusal(["tritonserver", "--http-restricted-api=logging:triton-admin-key=s3cret", flag])
    assert refusal is not None and "--grpc-restricted-protocol" in refusal and "TRITON_ADMIN_KEY" in refusal
    assert admin_key_refusal(["tritonserver", "--http-restricted-api=trace:triton-admin-key=  "]) is not None
    assert admin_key_refusal(["tritonserver"]) is None  # no restricted APIs: nothing to unlock

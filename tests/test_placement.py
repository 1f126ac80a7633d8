"""The sampling loop's placement (t2vserve.placement): the device of a GPU instance, and its checks.

The loop applies these functions to every input and every denoiser output (triton_models/denoising.py);
without a GPU here, GPU mode is tested on host tensors, which is what it must refuse.
"""

from __future__ import annotations

import pytest
import torch

from t2vserve.placement import HostTensorError, Placement


def test_the_instance_kind_and_device_id_decide_the_device() -> None:
    assert Placement.of_instance("GPU", "1").device == torch.device("cuda", 1)
    assert Placement.of_instance("GPU", 0).gpu
    for kind in ("CPU", "MODEL", ""):  # anything but a GPU instance follows its K/V, as before GPU mode
        assert Placement.of_instance(kind, "0") == Placement(None) and not Placement.of_instance(kind, "0").gpu
    assert "cuda:1" in Placement.of_instance("GPU", "1").describe()
    assert "CPU instance" in Placement().describe()


def test_gpu_mode_refuses_a_host_tensor_naming_it_its_origin_and_the_device_expected() -> None:
    place = Placement.of_instance("GPU", "1")
    with pytest.raises(HostTensorError) as raised:
        place.check("NOISE_PRED", torch.zeros(2, 4), "output of unet_int8")
    message = str(raised.value)
    assert "NOISE_PRED (output of unet_int8) arrived on cpu, expected cuda:1" in message
    assert "FORCE_CPU_ONLY_INPUT_TENSORS" in message  # and what to change


def test_gpu_mode_moves_a_host_input_once_and_reports_it() -> None:
    """A request's K/V in host memory (Triton's CUDA pool was full) is moved, not refused; the loop is told. The
    "meta" device stands in for the GPU this CI lacks: the move is real, the tensor's data is not."""
    place, reports = Placement(torch.device("meta")), []
    kv = place.receive("KV", torch.zeros(2, 3, 4), "input from conditioning", reports.append)
    assert kv.device.type == "meta" and kv.shape == (2, 3, 4)
    assert len(reports) == 1 and "KV (input from conditioning) arrived on cpu, moved to meta once" in reports[0]
    assert "--cuda-memory-pool-byte-size" in reports[0]


def test_cpu_mode_takes_tensors_as_they_come() -> None:
    place = Placement()
    kv = torch.zeros(2, 3, 4)
    assert place.check("NOISE_PRED", kv, "output of unet") is kv
    assert place.receive("KV", kv, "input") is kv  # no move: the request's own tensor is passed on unchanged
    assert place.loop_device(kv) == kv.device
    assert Placement.of_instance("GPU", "2").loop_device(kv) == torch.device("cuda", 2)  # latents drawn on the instance's GPU
    with place.active():  # no CUDA device to select
        pass

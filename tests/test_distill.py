"""The distilled student: analytic one-step targets, nested grids, the CPU smoke distillation, and its track served."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from t2vserve.ddim import DDIM
from t2vserve.families import get_family
from t2vserve.families.base import TRACK_DEFAULTS_FILE
from t2vserve.families.unet3d import TRAINED_SCHEDULER_CONFIG, cross_attention_modules
from t2vserve.train.distill import DISTILL_LOG, nested_grids, one_step_target, teacher_pairs
from t2vserve.spec import DISTILLED_TRACK

SCHEDULES = {
    "trained (v, zero terminal SNR, trailing)": TRAINED_SCHEDULER_CONFIG,
    "epsilon": {**TRAINED_SCHEDULER_CONFIG, "prediction_type": "epsilon", "rescale_betas_zero_snr": False},
}


@pytest.mark.parametrize("config", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_one_step_target_lands_where_the_teacher_landed(config) -> None:
    """The server's DDIM step fed the target goes from the sample exactly to the teacher's state (t = 999: SNR 0)."""
    ddim, generator = DDIM(config), torch.Generator().manual_seed(0)
    sample, landing = torch.randn(2, 3, 4, 4, 4, generator=generator), torch.randn(2, 3, 4, 4, 4, generator=generator)
    for t in ddim.timesteps(4):
        target = one_step_target(ddim, sample, landing, int(t), 4)
        torch.testing.assert_close(ddim.step(target, int(t), sample, 4), landing, atol=1e-4, rtol=1e-4)


def test_student_grids_must_be_every_kth_teacher_timestep() -> None:
    ddim = DDIM(TRAINED_SCHEDULER_CONFIG)
    assert list(ddim.timesteps(4)) == [999, 749, 499, 249] and nested_grids(ddim, 20, 4) == 5
    assert nested_grids(ddim, 40, 8) == 5 and nested_grids(ddim, 8, 4) == 2
    with pytest.raises(ValueError, match="8-step grid .* is not every k-th timestep of the 20-step grid"):
        nested_grids(ddim, 20, 8)  # 874 is not on the 20-step trailing grid: 20 -> 8 -> 4 is not possible


def test_a_student_that_hits_its_targets_ends_where_the_guided_teacher_ends(components) -> None:
    """On a toy teacher: the pairs' states are the guided 20-step trajectory's, and stepping the coarse grid with the
    targets as the student's outputs reproduces it, ending on the teacher's final sample."""
    family = get_family("unet3d")
    geometry = family.geometry(components, "tiny")
    ddim = DDIM(geometry.scheduler_config)

    class Toy(torch.nn.Module):  # conditional on the K/V row, so guidance matters
        def forward(self, sample, timestep, kv):
            return 0.3 * sample + kv.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1) + timestep.view(-1, 1, 1, 1, 1) / 1000

    batch, latents = 3, torch.randn(3, 4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    kv = torch.randn(2 * batch, 5, 6, generator=torch.Generator().manual_seed(2))
    pairs = teacher_pairs(Toy(), kv, latents, geometry, "fp16", 3.0, 20, 4)
    assert len(pairs) == 4 * batch and torch.equal(pairs.kv, kv[batch:])
    assert pairs.timestep.tolist() == [float(t) for t in ddim.timesteps(4) for _ in range(batch)]
    x = latents
    for j, t in enumerate(ddim.timesteps(4)):
        rows = slice(j * batch, (j + 1) * batch)
        torch.testing.assert_close(pairs.sample[rows], x)
        x = ddim.step(pairs.target[rows], int(t), x, 4)
    from t2vserve.samplers import make_sampler
    from t2vserve.sampling import conditioning_rows, denoise

    toy = Toy()
    final = denoise(lambda e, s, t: toy(s, t, conditioning_rows(kv, s.shape[0])), latents, 20, 3.0,
                    make_sampler("ddim", geometry.scheduler_config), geometry, "fp16")
    torch.testing.assert_close(x, final, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def smoke_student(tiny_model_dir, tmp_path_factory):
    """A copy of the trained demo model with a student from the CPU smoke distillation (a few updates)."""
    out = tmp_path_factory.mktemp("distilled") / "unet3d"
    proc = subprocess.run([sys.executable, "-m", "t2vserve.train", "distill", "--model", str(tiny_model_dir), "--out", str(out),
                           "--smoke", "--seed", "3"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_smoke_distillation_saves_a_loadable_student_that_moved(smoke_student, tiny_model_dir, tmp_path) -> None:
    out, proc = smoke_student
    assert "distill 4->2 step 3/3 loss" in proc.stderr and "it/s, ETA" in proc.stderr  # the loss log
    directory = out / "unet_distilled"
    assert json.loads((directory / TRACK_DEFAULTS_FILE).read_text()) == {"STEPS": 2, "GUIDANCE_SCALE": 1.0}
    log = json.loads((directory / DISTILL_LOG).read_text())
    (round_,) = log["rounds"]
    assert round_["updates"] == 3 and all(np.isfinite(r["loss"]) for r in log["history"]) and log["teacher_track"] == "fp16"
    errors = round_["endpoint_error_vs_teacher"]  # the student's final latents against the teacher's, and the baselines'
    assert set(errors) == {"student", "teacher_at_student_steps", "teacher_at_student_steps_unguided"}
    assert all(np.isfinite(e) and e > 0 for e in errors.values())
    assert (tiny_model_dir / "unet").is_dir() and not (tiny_model_dir / DISTILL_LOG).exists()  # the source is only read

    family = get_family("unet3d")
    components = family.components(out)
    student, teacher = components.unet_distilled, components.unet
    moved = [not torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters())]
    assert sum(moved) > 0.5 * len(moved)
    for (_, s), (_, t) in zip(cross_attention_modules(student), cross_attention_modules(teacher)):
        # never used (the served kv_projector computes the K/V from the teacher's): no gradient, unchanged
        assert torch.equal(s.to_k.weight, t.to_k.weight) and torch.equal(s.to_v.weight, t.to_v.weight)
    geometry = family.geometry(components, "tiny")
    assert geometry.tracks[DISTILLED_TRACK] == ["unet_distilled"]
    assert geometry.defaults(precision=DISTILLED_TRACK)["STEPS"] == 2
    assert "unet_distilled" in {slot.name for slot in family.slots_of(geometry)}
    without = shutil.copytree(out, tmp_path / "without", ignore=shutil.ignore_patterns("unet_distilled"))
    assert DISTILLED_TRACK not in family.geometry(family.components(without), "tiny").tracks  # no student, no track


@pytest.fixture(scope="module")
def distilled_server(smoke_student, repository, tmp_path_factory):
    """The session's exported repository plus the smoke student's entry, exported from the student's model copy."""
    from t2vserve.export import export_model
    from t2vserve.server import EmbeddedTritonServer

    out, _ = smoke_student
    root = tmp_path_factory.mktemp("distilled-repo") / "model_repository"
    shutil.copytree(repository, root)
    export_model(out, root, "tiny", only=["unet_distilled"])  # its ONNX (checked against torch), configs, geometry
    with EmbeddedTritonServer(root, log_path=root.parent / "tritonserver.log") as srv:
        yield srv


def test_the_distilled_track_is_served_with_its_own_steps_and_guidance(distilled_server, smoke_student) -> None:
    """PRECISION=distilled: the student's STEPS (2 for the smoke student) at guidance 1, one batch-1 UNet call per
    step; explicit STEPS / GUIDANCE_SCALE override them; the clip equals the in-process pipeline's."""
    from t2vserve.bench.common import model_stats
    from t2vserve.client import GenerationRequest, T2VClient
    from t2vserve.params import ResolvedRequest
    from t2vserve.pipeline import InProcessPipeline

    out, _ = smoke_student
    prompt, url = "a red circle moving to the right on a black background", distilled_server.grpc_url

    def denoiser_delta(request: GenerationRequest) -> tuple[np.ndarray, dict]:
        before = model_stats(url)
        with T2VClient(url) as client:
            video = client.generate(request).video
        after = model_stats(url)
        return video, {name: (after[name]["inferences"] - before[name]["inferences"],
                              {size: b["count"] - before[name]["batches"].get(size, {"count": 0})["count"]
                               for size, b in after[name]["batches"].items()}) for name in ("unet", "unet_int8", "unet_distilled")}

    served, delta = denoiser_delta(GenerationRequest(prompt, seed=5, precision=DISTILLED_TRACK))
    assert delta["unet_distilled"][0] == 2 and delta["unet_distilled"][1][1] == 2, delta  # 2 steps x batch 1
    assert delta["unet"][0] == delta["unet_int8"][0] == 0
    _, delta = denoiser_delta(GenerationRequest(prompt, seed=5, precision=DISTILLED_TRACK, steps=3, guidance_scale=2.0))
    assert delta["unet_distilled"][0] == 6 and delta["unet_distilled"][1][2] == 3, delta  # explicit: 3 CFG pairs

    family = get_family("unet3d")
    components = family.components(out)
    geometry = family.geometry(components, "tiny")
    p = geometry.presets
    request = ResolvedRequest(prompt, "", 2, 1.0, 5, p.height, p.width, p.num_frames, p.fps, DISTILLED_TRACK, "ddim")
    expected = InProcessPipeline(components, geometry).generate(request).astype(int)
    diff = np.abs(served.astype(int) - expected)
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())

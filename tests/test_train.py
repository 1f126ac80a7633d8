"""``python -m t2vserve.train --smoke``: the training path on the CPU (a few steps of every stage)."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from t2vserve.export import trained_model_dir
from t2vserve.families import get_family
from t2vserve.train.fit import after_warmup


@pytest.mark.parametrize("name", ["unet3d", "wan22"])
def test_smoke_training_saves_a_loadable_model_that_moved(tmp_path, name: str) -> None:
    out = tmp_path / "trained"
    proc = subprocess.run([sys.executable, "-m", "t2vserve.train", "--family", name, "--out", str(out), "--smoke", "--seed", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "denoiser step 3/3 loss" in proc.stderr and "vae step 2/2 loss" in proc.stderr  # the loss log
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps"] == 3 and log["vae_steps"] == 2 and all(np.isfinite(r["loss"]) for r in log["history"])

    family = get_family(name)
    trained = family.components(out)
    initial = family.components(family.build_tiny_model(tmp_path / "init", seed=3, **family.training_variant()))
    for part in set(family.component_names) - {"tokenizer", "scheduler"}:  # every part was trained (weights moved)
        moved = [not torch.equal(a, b) for a, b in zip(getattr(trained, part).parameters(), getattr(initial, part).parameters())]
        assert sum(moved) > 0.5 * len(moved), part
    assert dict(trained.vae.config) != dict(initial.vae.config)  # the latent scale fitted to the data


@pytest.mark.parametrize("name", ["unet3d", "wan22"])
def test_the_shipped_demo_model_loads_as_diffusers_weights(tmp_path, name: str) -> None:
    """Each family's trained demo model is a diffusers directory (``model_index.json`` names its pipeline), under 25 MB."""
    directory = trained_model_dir(name)
    assert directory is not None, f"t2vserve/data/trained/{name} is missing"
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(directory))
    assert type(pipe).__name__ == json.loads((directory / "model_index.json").read_text())["_class_name"]
    assert json.loads((directory / "train_log.json").read_text())["config"]["family"] == name
    family = get_family(name)
    untrained = family.build_tiny_model(tmp_path / "untrained", **family.training_variant())
    initial = {k: v for k, v in json.loads((untrained / "vae" / "config.json").read_text()).items() if not k.startswith("_")}
    shipped = {k: v for k, v in json.loads((directory / "vae" / "config.json").read_text()).items() if k in initial}
    assert shipped.keys() == initial.keys() and shipped != initial  # the latent scale fitted to the data
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    assert size < 25e6


def test_a_time_budget_that_binds_first_drives_the_learning_rate_schedule() -> None:
    from t2vserve.train.fit import Deadline, lr_factor

    assert Deadline(None).progress(110, 1010, 10) == 0.1  # no budget: by steps
    deadline = Deadline(time.perf_counter() + 0.2)
    assert deadline.progress(5, 1000, 10) == after_warmup(5, 1000, 10) and not deadline.passed()  # warm-up: by steps
    assert deadline.progress(10, 1000, 10) < 0.5  # the warm-up ends: the time runs from here
    time.sleep(0.25)
    assert deadline.passed() and deadline.progress(11, 1000, 10) >= 1.0  # 1 of 990 steps, all of the time
    assert lr_factor(11, deadline.progress(12, 1000, 10), 10) == pytest.approx(0.1)  # the cosine's floor

"""``python -m t2vserve.train --smoke``: the training path on the CPU (a few steps of every stage)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from t2vserve.export import trained_model_dir
from t2vserve.families import get_family


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


def test_the_shipped_demo_model_loads_as_diffusers_weights() -> None:
    directory = trained_model_dir("unet3d")
    assert directory is not None, "t2vserve/data/trained/unet3d is missing"
    from diffusers import TextToVideoSDPipeline

    pipe = TextToVideoSDPipeline.from_pretrained(str(directory))
    log = json.loads((directory / "train_log.json").read_text())
    assert pipe.vae.config.scaling_factor == log["vae_scaling_factor"]
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    assert size < 25e6

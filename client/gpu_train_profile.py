"""Time one full training step of the tiny unet3d model on the GPU: precision x attention backend x batch.

A step is what ``t2vserve.train`` does per denoiser step: render a batch, VAE-encode it, text
encoder, denoiser loss, backward, AdamW. Run on the GPU machine after installing diffusers (see
client/gpu_train.sh):
    PYTHONPATH=/tmp/site:$PWD python3 client/gpu_train_profile.py
The figures quoted in t2vserve/train/fit.py come from this script.
"""
import contextlib
import random
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from t2vserve.families import get_family
from t2vserve.train import world

torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
family = get_family("unet3d")
model_dir = family.build_tiny_model(Path("/tmp/profile-model"), **family.training_variant())
trainer = family.trainer(family.components(model_dir), torch.device("cuda"))
params = [*trainer.text_encoder.parameters(), *trainer.denoiser.parameters()]
optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
rng = random.Random(0)
PRECISIONS = {"bf16-autocast": lambda: torch.autocast("cuda", dtype=torch.bfloat16), "fp32-tf32": contextlib.nullcontext}
BACKENDS = {"math": [SDPBackend.MATH], "default": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]}


def step(batch: int, precision: str, backend: str) -> None:
    clips, captions, _ = world.batch(batch, rng, device="cuda", drop_caption=0.1)
    ids = trainer.tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids.cuda()
    with PRECISIONS[precision](), sdpa_kernel(BACKENDS[backend]):
        loss = trainer.denoiser_loss(trainer.encode(clips), trainer.text_embeddings(ids))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


print(f"{'batch':>5} {'precision':>14} {'attention':>9} {'ms/step':>8}")
for batch in (64, 128):
    for precision in PRECISIONS:
        for backend in BACKENDS:
            for _ in range(3):
                step(batch, precision, backend)
            torch.cuda.synchronize()
            start, n = time.perf_counter(), 15
            for _ in range(n):
                step(batch, precision, backend)
            torch.cuda.synchronize()
            print(f"{batch:>5} {precision:>14} {backend:>9} {(time.perf_counter() - start) / n * 1000:>8.1f}", flush=True)

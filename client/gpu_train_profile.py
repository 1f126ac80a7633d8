"""Time one training step of the tiny UNet on the GPU per attention backend and UNet width (batch 128).

Run on the GPU machine after installing diffusers (see client/gpu_train.sh):
    PYTHONPATH=/tmp/site:$PWD python3 client/gpu_train_profile.py
The math-vs-flash figures quoted in t2vserve/train/fit.py come from this script.
"""
import random
import time
from pathlib import Path

import torch
from diffusers import UNet3DConditionModel
from torch.nn.attention import SDPBackend, sdpa_kernel

from t2vserve.train import world
from t2vserve.families import get_family
from t2vserve.families.unet3d import TINY_UNET_CONFIG
fam = get_family("unet3d")
d = fam.build_tiny_model(Path("/tmp/pm"))
tr = fam.trainer(fam.components(d), torch.device("cuda"))
rng = random.Random(0)
def timed(name, fn, n=8):
    fn(); torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); print(f"{name}: {(time.perf_counter()-t)/n*1000:.1f} ms", flush=True)
B=128
clips, caps, attrs = world.batch(B, rng, device="cuda")
ids = tr.tokenizer(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids.cuda()
with torch.autocast("cuda", dtype=torch.bfloat16):
    lat = tr.encode(clips)
for variant in [{}, {"attention_head_dim": 2}, {"block_out_channels": [64, 128], "cross_attention_dim": 32, "norm_num_groups": 16, "attention_head_dim": 4}]:
    tr.denoiser = UNet3DConditionModel(**{**TINY_UNET_CONFIG, **variant}).cuda()
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH, SDPBackend.CUDNN_ATTENTION):
        def step():
            with sdpa_kernel([backend]), torch.autocast("cuda", dtype=torch.bfloat16):
                loss = tr.denoiser_loss(lat, tr.text_embeddings(ids)); loss.backward()
        try:
            timed(f"{variant} {backend}", step)
        except Exception as e:
            print(variant, backend, "failed", str(e)[:100])

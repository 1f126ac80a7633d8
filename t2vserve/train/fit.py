"""Train a family's tiny model on the shapes world: the VAE first, then the text encoder and denoiser together.

Stage 1 fits the VAE (to frames or whole clips, as the family's adapter says) and sets its latent scale
from the latents' spread.
Stage 2 trains the text encoder and the denoiser jointly on the frozen VAE's latents, with 10 %
of captions replaced by the tiny preset's default negative prompt (what the server's unconditional
branch gets when a request names none: empty for unet3d, Wan's own for wan22), so classifier-free
guidance works and small auxiliary heads that predict colour, shape and motion from the pooled
text embedding (they only speed up the text encoder's start and are not saved). An EMA of the
weights is what gets saved. Everything is seeded; loss is logged with throughput and ETA.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..families import get_family
from ..spec import PRESETS
from . import world

log = logging.getLogger("t2vserve.train")
#: Written next to the trained weights: configuration, loss history, steps and times.
TRAIN_LOG = "train_log.json"


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (the defaults are the committed unet3d demo model's; a family's
    ``training_recipe`` overrides some of them: ``TrainConfig.for_family``)."""

    family: str = "unet3d"
    seed: int = 0
    frames: int = 0  # 0: the family's tiny preset's (unet3d 8, wan22 9)
    size: int = 64
    vae_steps: int = 1000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_foreground_weight: float = 0.0  # > 0: reconstruction errors weighted up where a pixel differs from its frame's mean colour
    vae_share: float = 0.25  # with max_seconds: the VAE stage stops at this share of it
    steps: int = 3000
    batch: int = 64
    lr: float = 8e-4
    warmup: int = 300
    drop_caption: float = 0.1
    aux_weight: float = 0.1
    ema_decay: float = 0.999
    log_every: int = 100
    max_seconds: float = 0.0  # 0: none; else a safety stop: the VAE stage ends at vae_share of it, training at all of it
    backgrounds: str = ""  # comma-separated world backgrounds to train on (e.g. "black" for short CPU runs); "": all

    @classmethod
    def for_family(cls, family: str, **overrides: Any) -> "TrainConfig":
        """The family's recipe (``Family.training_recipe``) over the defaults, then ``overrides``."""
        return cls(family=family, **{**get_family(family).training_recipe(), **overrides})

    def background_names(self) -> list[str] | None:
        return [name.strip() for name in self.backgrounds.split(",") if name.strip()] or None


def lr_factor(step: int, progress: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10 % as ``progress`` goes 0 -> 1."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def after_warmup(step: int, total: int, warmup: int) -> float:
    return (step - warmup) / max(total - warmup, 1)


class Deadline:
    """A stage's time budget (``end`` None: none): when to stop, and how far the stage is in time."""

    def __init__(self, end: float | None) -> None:
        self.end = end
        self.warm: float | None = None  # when the warm-up ended

    def passed(self) -> bool:
        return self.end is not None and time.perf_counter() > self.end

    def progress(self, step: int, total: int, warmup: int) -> float:
        """The learning-rate schedule's progress after the warm-up (called once per step): by steps, or by time where
        the budget will stop the stage first, so a run cut short by it (a slower GPU than planned) still ends its decay."""
        by_steps = after_warmup(step, total, warmup)
        if self.end is None or step < warmup:
            return by_steps
        now = time.perf_counter()
        self.warm = self.warm if self.warm is not None else now
        return max(by_steps, (now - self.warm) / max(self.end - self.warm, 1e-9))


class Ema:
    """Exponential moving average of a module's floating-point parameters."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module, self.decay = module, decay
        self.shadow = [p.detach().clone() for p in module.parameters()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.module.parameters()], 1 - decay)

    @torch.no_grad()
    def copy_to_module(self) -> None:
        for p, s in zip(self.module.parameters(), self.shadow):
            p.copy_(s)


class _AuxHeads(nn.Module):
    """Colour, shape and motion classifiers on the mean-pooled text embedding (training aid, not saved)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({
            "colour": nn.Linear(width, len(world.COLOURS)),
            "shape": nn.Linear(width, len(world.SHAPES)),
            "motion": nn.Linear(width, len(world.MOTIONS)),
        })
        self.labels = {"colour": list(world.COLOURS), "shape": list(world.SHAPES), "motion": list(world.MOTIONS)}

    def loss(self, text: torch.Tensor, attrs: list[world.Attributes], captioned: list[bool]) -> torch.Tensor:
        """Cross-entropy of the three heads over the captioned rows (indices built on the host: no device sync)."""
        rows = [i for i, c in enumerate(captioned) if c]
        if not rows:
            return text.sum() * 0
        index = torch.tensor(rows).to(text.device, non_blocking=True)
        # mean over the positions that carry text: all of CLIP's; Wan's embeddings are zero after the prompt's
        # tokens (about 20 of 512), and a plain mean would shrink the heads' input 25-fold
        carries = text.detach().float().abs().sum(dim=-1, keepdim=True).gt(0).float()
        pooled = ((text.float() * carries).sum(dim=1) / carries.sum(dim=1).clamp(min=1)).index_select(0, index)
        total = text.new_zeros((), dtype=torch.float32)
        for name, head in self.heads.items():
            labels = torch.tensor([self.labels[name].index(getattr(attrs[i], name)) for i in rows])
            total = total + nn.functional.cross_entropy(head(pooled), labels.to(text.device, non_blocking=True))
        return total


class Progress:
    """Loss log lines with throughput and ETA, and the history written to train_log.json."""

    def __init__(self, stage: str, total: int, every: int, history: list[dict[str, Any]]) -> None:
        self.stage, self.total, self.every, self.history = stage, total, every, history
        self.start = time.perf_counter()
        self.window: list[torch.Tensor] = []

    def __call__(self, step: int, loss: torch.Tensor, **extra: torch.Tensor) -> None:
        """Record ``loss`` (a tensor: no host sync until a log line is due)."""
        self.window.append(loss.detach())
        if (step + 1) % self.every and step + 1 != self.total:
            return
        now = time.perf_counter()
        rate = (step + 1) / (now - self.start)
        mean = float(torch.stack(self.window).float().mean())
        extra = {k: float(v.detach()) for k, v in extra.items()}
        row = {"stage": self.stage, "step": step + 1, "loss": mean, "seconds": now - self.start, **extra}
        self.history.append(row)
        extras = " ".join(f"{k} {v:.4g}" for k, v in extra.items())
        log.info("%s step %d/%d loss %.5f %s| %.1f it/s, ETA %.0f s", self.stage, step + 1, self.total, mean, extras + " " if extras else "",
                 rate, (self.total - step - 1) / rate)
        self.window.clear()


class Tokens:
    """Caption -> token ids as the server tokenizes them (padded to the model's length), memoised."""

    def __init__(self, tokenizer: Any, clean: Callable[[str], str]) -> None:
        self.tokenizer, self.clean, self.cache = tokenizer, clean, {}

    def __call__(self, captions: list[str], device: torch.device) -> torch.Tensor:
        new = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if new:
            ids = self.tokenizer([self.clean(c) for c in new], padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self.cache.update(zip(new, ids))
        return torch.stack([self.cache[c] for c in captions]).to(device, non_blocking=True)


def attention_kernels(dev: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The attention kernels of the tiny models' training: on CUDA the math backend. The tiny UNet's attention has
    8-16 wide heads over 8 frames: batched matmuls beat the flash kernels there (H100, one full step of batch 64:
    132 vs 176 ms; bf16 autocast and FP32/TF32 take the same time: client/gpu_train_profile.py)."""
    return (lambda: sdpa_kernel([SDPBackend.MATH])) if dev.type == "cuda" else contextlib.nullcontext


def train(config: TrainConfig, out_dir: Path, device: str = "cpu") -> dict[str, Any]:
    """Build the family's tiny model in ``out_dir``, train it, save it (diffusers format); returns the log."""
    dev = torch.device(device)
    family = get_family(config.family)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    out_dir = Path(out_dir)
    family.build_tiny_model(out_dir, seed=config.seed, **family.training_variant())  # architecture, tokenizer, scheduler; weights from here on
    trainer = family.trainer(family.components(out_dir), dev)
    frames = config.frames or PRESETS[family.tiny_preset].num_frames
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    attention = attention_kernels(dev)
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    budget = config.max_seconds
    backgrounds = config.background_names()

    # -- stage 1: VAE ------------------------------------------------------------------------------
    optimizer = torch.optim.AdamW(trainer.vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    progress = Progress("vae", config.vae_steps, config.log_every, history)
    deadline = Deadline(started + config.vae_share * budget if budget else None)
    vae_steps = 0
    for step in range(config.vae_steps):
        clips, _, _ = world.batch(config.vae_batch, rng, frames, config.size, dev, backgrounds=backgrounds)
        for group in optimizer.param_groups:
            group["lr"] = config.vae_lr * lr_factor(step, deadline.progress(step, config.vae_steps, config.warmup), config.warmup)
        with autocast:
            loss, parts = trainer.vae_loss(clips, config.vae_foreground_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.vae.parameters(), 1.0)
        optimizer.step()
        progress(step, loss, **parts)
        vae_steps = step + 1
        if deadline.passed():
            log.warning("vae stage stopped at step %d: time budget", vae_steps)
            break
    trainer.vae.eval().requires_grad_(False)
    clips, _, _ = world.batch(64, rng, frames, config.size, dev, backgrounds=backgrounds)
    scale = trainer.fit_latent_scale(clips)
    log.info("VAE scaling_factor %.5f", scale)
    vae_seconds = time.perf_counter() - started

    # -- stage 2: text encoder + denoiser --------------------------------------------------------
    models = nn.ModuleList([trainer.text_encoder, trainer.denoiser])
    aux = _AuxHeads(trainer.text_encoder.config.hidden_size).to(dev)
    optimizer = torch.optim.AdamW([*models.parameters(), *aux.parameters()], lr=config.lr, weight_decay=0.01,
                                  fused=dev.type == "cuda")

    emas = [Ema(trainer.text_encoder, config.ema_decay), Ema(trainer.denoiser, config.ema_decay)]
    progress = Progress("denoiser", config.steps, config.log_every, history)
    deadline = Deadline(started + budget if budget else None)
    tokens = Tokens(trainer.tokenizer, family.clean_prompt)
    negative = PRESETS[family.tiny_preset].negative_prompt
    steps = 0
    for step in range(config.steps):
        if deadline.passed():
            log.warning("denoiser stage stopped after %d of %d steps: time budget", steps, config.steps)
            break
        clips, captions, attrs = world.batch(config.batch, rng, frames, config.size, dev, config.drop_caption, backgrounds)
        captioned = [bool(c) for c in captions]
        ids = tokens([c if c else negative for c in captions], dev)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, deadline.progress(step, config.steps, config.warmup), config.warmup)
        with autocast, attention():
            latents = trainer.encode(clips)
            text = trainer.text_embeddings(ids)
            diffusion = trainer.denoiser_loss(latents, text)
            aux_loss = aux.loss(text, attrs, captioned)
            loss = diffusion + config.aux_weight * aux_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
        optimizer.step()
        for ema in emas:
            ema.update(step)
        progress(step, diffusion, aux=aux_loss)
        steps = step + 1
    for ema in emas:
        ema.copy_to_module()
    for name, module in trainer.saved.items():
        copy.deepcopy(module).float().cpu().save_pretrained(str(out_dir / name))
    seconds = time.perf_counter() - started
    summary = {
        "config": asdict(config),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "vae_steps": vae_steps,
        "steps": steps,
        "vae_scaling_factor": scale,
        "vae_seconds": vae_seconds,
        "seconds": seconds,
        "final_vae_loss": next((r["loss"] for r in reversed(history) if r["stage"] == "vae"), None),
        "final_loss": next((r["loss"] for r in reversed(history) if r["stage"] == "denoiser"), None),
        "history": history,
    }
    (out_dir / TRAIN_LOG).write_text(json.dumps(summary, indent=1) + "\n")
    log.info("trained in %.0f s (VAE %.0f s); final denoiser loss %.5f; saved %s", seconds, vae_seconds, summary["final_loss"] or float("nan"), out_dir)
    return summary

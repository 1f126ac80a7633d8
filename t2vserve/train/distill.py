"""Distil the trained demo model into a few-step, guidance-free student: the ``distilled`` track (``unet_distilled``).

Method: guidance and step distillation in one stage, after Salimans & Ho 2022 ("Progressive Distillation for
Fast Sampling of Diffusion Models") and Meng et al. 2023 ("On Distillation of Guided Diffusion Models").

* **Teacher**: the trained UNet sampled as the server samples it: DDIM (eta 0) on the fine trailing grid of
  ``teacher_steps`` timesteps (20), classifier-free guidance at the preset's scale (3.0) with the unconditional
  branch on the preset's negative prompt (empty), through the packed-K/V UNet the server runs (``CachedKVUNet``
  fed by the served ``kv_projector``), in the one loop ``sampling.denoise``.
* **Student**: initialised from the teacher's weights; it learns to take *one* DDIM step on the coarse
  trailing grid (4 steps: 999, 749, 499, 249, every k = 5th timestep of the 20-step grid, checked by
  ``nested_grids``) landing where k guided teacher steps land. Salimans & Ho's two-step target, generalised to
  k steps; guidance folded in as in Meng et al., collapsed into one stage at a fixed scale (no w input): the
  student sees the conditional input only, so it is served at GUIDANCE_SCALE 1 with one batch-1 call per step
  (4 UNet samples per clip instead of 2 x 10 for the 10-step preset).
* **Target**: DDIM's update x' = sqrt(a') x0 + sqrt(1 - a') (x - sqrt(a) x0) / sqrt(1 - a), solved for the x0
  that lands exactly on the teacher's x' (Salimans & Ho, eq. 8), expressed in the model's prediction type
  (v for the demo model: v = (sqrt(a) x - x0) / sqrt(1 - a)). MSE on v weighs the x0 error by SNR + 1, the
  "truncated SNR" weighting those papers use, finite at the zero-SNR first step (t = 999, a = 0).
* **Data-free**: prompts from the shapes world's caption templates (training combinations only: the held-out
  ones stay unseen, as for the teacher), seeded noise; teacher trajectories are generated on the fly, a batch
  at a time, and every trajectory gives one training pair per student step from the teacher's own states.
* **Rounds**: ``grids`` "20,4" is one round; "40,8,4" would be two, progressive (each later round's teacher
  is the previous round's guidance-free student). 20 -> 8 -> 4 is not possible: the 8-step trailing grid
  (999, 874, ...) is not part of the 20-step one (999, 949, ...).

The student's own cross-attention K/V projections are never used (the served ``kv_projector`` computes the
K/V from the teacher's), get no gradient and stay the teacher's. ``python -m t2vserve.train distill``;
``client/gpu_distill.sh`` on the GPU machine.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ddim import DDIM
from ..families import get_family
from ..families.base import TRACK_DEFAULTS_FILE, Family
from ..samplers import make_sampler
from ..sampling import Denoiser, conditioning_rows, denoise
from ..spec import DISTILLED_TRACK, KV_PROJECTOR, TEXT_ENCODER
from ..geometry import ModelGeometry
from . import world
from .fit import Ema, Progress, Tokens, after_warmup, attention_kernels, lr_factor

log = logging.getLogger("t2vserve.distill")
#: Written next to the student's weights: configuration, per-round results, loss history.
DISTILL_LOG = "distill_log.json"


@dataclass
class DistillConfig:
    """Hyper-parameters of one distillation (the defaults are sized for one H100 call of about 5 minutes)."""

    seed: int = 0
    grids: str = "20,4"  # DDIM steps of the teacher, then of each round's student (each grid part of the previous)
    guidance_scale: float = 0.0  # the teacher's CFG scale; 0: the preset's
    trajectories: int = 256  # teacher trajectories per batch (each gives one pair per student step)
    batch: int = 64  # pairs per student update
    updates: int = 3000  # student updates per round
    lr: float = 1e-4
    warmup: int = 100
    ema_decay: float = 0.999
    frames: int = 0  # 0: the preset's
    size: int = 0  # clip height and width; 0: the preset's
    log_every: int = 100
    max_seconds: float = 0.0  # 0: none; else the loop stops (and saves) after this many seconds over all rounds

    def grid_steps(self) -> list[int]:
        steps = [int(s) for s in self.grids.split(",")]
        if len(steps) < 2 or any(a <= b for a, b in zip(steps, steps[1:])):
            raise ValueError(f"grids must be decreasing step counts, teacher first, e.g. '20,4'; got {self.grids!r}")
        return steps


def nested_grids(ddim: DDIM, teacher_steps: int, student_steps: int) -> int:
    """k such that every student step starts on the teacher's every k-th timestep and lands where k teacher steps
    land (same alpha); ValueError naming the timesteps otherwise."""
    fine, coarse = ddim.timesteps(teacher_steps), ddim.timesteps(student_steps)
    k = teacher_steps // student_steps
    landing = lambda t, steps: float(ddim.alphas(int(t), steps)[1])  # noqa: E731
    nested = teacher_steps % student_steps == 0 and list(fine[::k]) == list(coarse) and all(
        landing(coarse[j], student_steps) == landing(fine[(j + 1) * k - 1], teacher_steps) for j in range(student_steps))
    if not nested:
        raise ValueError(f"the {student_steps}-step grid {list(coarse)} is not every k-th timestep of the {teacher_steps}-step "
                         f"grid {list(fine)} ({ddim.config['timestep_spacing']} spacing): choose nested step counts")
    return k


def one_step_target(ddim: DDIM, sample: torch.Tensor, landing: torch.Tensor, timestep: int, steps: int) -> torch.Tensor:
    """The model output with which ``ddim.step(output, timestep, sample, steps)`` returns ``landing`` exactly."""
    if ddim.config["clip_sample"]:
        raise ValueError("distillation targets need an unclipped DDIM (clip_sample false)")
    alpha, alpha_prev = (float(a) for a in ddim.alphas(int(timestep), steps))
    ratio = ((1 - alpha_prev) / (1 - alpha)) ** 0.5
    x0 = (landing - ratio * sample) / (alpha_prev**0.5 - ratio * alpha**0.5)
    kind = ddim.config["prediction_type"]
    if kind == "v_prediction":
        return (alpha**0.5 * sample - x0) / (1 - alpha) ** 0.5
    if kind == "epsilon":
        return (sample - alpha**0.5 * x0) / (1 - alpha) ** 0.5
    return x0


class Prompts:
    """Random training captions with their packed K/V, and the negative prompt's (the unconditional branch)."""

    def __init__(self, family: Family, components: Any, geometry: ModelGeometry, device: torch.device) -> None:
        slots = {slot.role: slot for slot in family.slots_of(geometry)}
        self.text_encoder = slots[TEXT_ENCODER].module(components).to(device).eval()
        self.projector = slots[KV_PROJECTOR].module(components).to(device).eval()
        self.tokens, self.device = Tokens(components.tokenizer, family.clean_prompt), device
        self.negative = self.packed_kv([geometry.presets.negative_prompt])

    @torch.no_grad()
    def packed_kv(self, texts: list[str]) -> torch.Tensor:
        return self.projector(self.text_encoder(self.tokens(texts, self.device))).float()

    def sample(self, count: int, rng: random.Random) -> torch.Tensor:
        """K/V [2 * count, seq, width] of ``count`` random captions: negative rows first, as the server packs them."""
        text = self.packed_kv([world.caption(world.sample_attributes(rng), rng) for _ in range(count)])
        return torch.cat([self.negative.expand(count, -1, -1), text])


@dataclass
class Pairs:
    """Student training pairs: sample at a coarse timestep, that timestep, the one-step target, its prompt's K/V row."""

    sample: torch.Tensor
    timestep: torch.Tensor
    target: torch.Tensor
    kv_index: torch.Tensor
    kv: torch.Tensor  # the prompts' (conditional) K/V rows [B, seq, width]

    def __len__(self) -> int:
        return self.sample.shape[0]


def bound(module: nn.Module, kv: torch.Tensor) -> Denoiser:
    """``module`` as the loop's denoiser, with the K/V rows of each call taken from ``kv`` [negative rows, prompt rows]."""
    return lambda entry, sample, timestep: module(sample, timestep, conditioning_rows(kv, sample.shape[0]))


@torch.no_grad()
def teacher_pairs(teacher: nn.Module, kv: torch.Tensor, latents: torch.Tensor, geometry: ModelGeometry, track: str,
                  guidance_scale: float, teacher_steps: int, student_steps: int) -> Pairs:
    """Run the teacher over ``latents`` [B, ...] (K/V ``kv`` [2B, ...]) and keep its states on the student's grid."""
    ddim = DDIM(geometry.scheduler_config)
    k = nested_grids(ddim, teacher_steps, student_steps)
    states = [latents]

    def keep(done: int, total: int, current: torch.Tensor) -> None:
        if done % k == 0:
            states.append(current)

    denoise(bound(teacher, kv), latents, teacher_steps, guidance_scale, make_sampler("ddim", geometry.scheduler_config), geometry, track, keep)
    coarse, batch = ddim.timesteps(student_steps), latents.shape[0]
    targets = [one_step_target(ddim, states[j], states[j + 1], int(t), student_steps) for j, t in enumerate(coarse)]
    timesteps = torch.tensor([float(t) for t in coarse], device=latents.device).repeat_interleave(batch)
    index = torch.arange(batch, device=latents.device).repeat(len(coarse))
    return Pairs(torch.cat(states[:-1]), timesteps, torch.cat(targets), index, conditioning_rows(kv, batch))


class Distillation:
    """One model's distillation: the teacher, the prompts, the noise; ``run_round`` trains one student."""

    def __init__(self, config: DistillConfig, family: Family, model_dir: Path, dev: torch.device) -> None:
        self.config, self.family, self.dev = config, family, dev
        torch.manual_seed(config.seed)
        self.rng, self.noise = random.Random(config.seed), torch.Generator().manual_seed(config.seed)
        components = family.components(model_dir)
        self.geometry = family.geometry(components, family.tiny_preset)
        if "ddim" not in self.geometry.samplers:
            raise ValueError(f"distillation needs a DDIM model; {family.name} samples with {', '.join(self.geometry.samplers)}")
        self.track = self.geometry.tier_precision("full")  # the full-precision UNet is the teacher
        slot = family.slot(self.geometry.tracks[self.track][0])
        self.teacher = slot.module(components).to(dev).eval().requires_grad_(False)
        self.prompts = Prompts(family, components, self.geometry, dev)
        preset = self.geometry.presets
        size, frames = config.size or preset.height, config.frames or preset.num_frames
        self.shape = self.geometry.latent_shape(size, size, frames, batch=config.trajectories)
        self.attention = attention_kernels(dev)
        self.history: list[dict[str, Any]] = []
        log.info("teacher %s (%s track), latents %s per teacher batch", slot.name, self.track, list(self.shape))

    def pairs(self, teacher: nn.Module, guidance_scale: float, teacher_steps: int, student_steps: int) -> Pairs:
        kv = self.prompts.sample(self.config.trajectories, self.rng)
        latents = torch.randn(self.shape, generator=self.noise).to(self.dev)
        with self.attention():
            pairs = teacher_pairs(teacher, kv, latents, self.geometry, self.track, guidance_scale, teacher_steps, student_steps)
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)  # teacher time measured apart from the student's
        return pairs

    @torch.no_grad()
    def endpoint_errors(self, teacher: nn.Module, student: nn.Module, guidance_scale: float, teacher_steps: int,
                        student_steps: int) -> dict[str, float]:
        """Relative RMS distance of final latents from the teacher's on its own grid, on one held-out batch (prompts and
        noise of their own seed): the student's; the teacher's at the student's step count, guided (what distillation
        has to beat) and guidance-free (what the student starts as)."""
        seed = self.config.seed + 10**6
        kv = self.prompts.sample(self.config.trajectories, random.Random(seed))
        latents = torch.randn(self.shape, generator=torch.Generator().manual_seed(seed)).to(self.dev)
        sampler = make_sampler("ddim", self.geometry.scheduler_config)
        run = lambda module, steps, guidance: denoise(bound(module, kv), latents, steps, guidance, sampler, self.geometry, self.track)  # noqa: E731
        with self.attention():
            reference = run(teacher, teacher_steps, guidance_scale)
            finals = {"student": run(student, student_steps, 1.0), "teacher_at_student_steps": run(teacher, student_steps, guidance_scale),
                      "teacher_at_student_steps_unguided": run(teacher, student_steps, 1.0)}
        scale = float(reference.pow(2).mean().sqrt())
        return {name: float((final - reference).pow(2).mean().sqrt()) / scale for name, final in finals.items()}

    def run_round(self, teacher: nn.Module, guidance_scale: float, teacher_steps: int, student_steps: int,
                  deadline: float | None) -> tuple[nn.Module, dict[str, Any]]:
        """A student (from ``teacher``'s weights) of ``student_steps`` steps; its round's figures."""
        config, started = self.config, time.perf_counter()
        student = copy.deepcopy(teacher).train().requires_grad_(True)
        optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0, fused=self.dev.type == "cuda")
        ema = Ema(student, config.ema_decay)
        progress = Progress(f"distill {teacher_steps}->{student_steps}", config.updates, config.log_every, self.history)
        update, teacher_seconds, first_loss = 0, 0.0, None
        out_of_time = lambda: deadline is not None and time.perf_counter() >= deadline  # noqa: E731
        while update < config.updates and not out_of_time():
            start = time.perf_counter()
            pairs = self.pairs(teacher, guidance_scale, teacher_steps, student_steps)
            teacher_seconds += time.perf_counter() - start
            size = min(config.batch, len(pairs))
            order = torch.randperm(len(pairs), generator=self.noise).to(self.dev)
            for begin in range(0, len(pairs) - size + 1, size):
                if update >= config.updates or out_of_time():
                    break
                rows = order[begin : begin + size]
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * lr_factor(update, after_warmup(update, config.updates, config.warmup), config.warmup)
                with self.attention():
                    output = student(pairs.sample[rows], pairs.timestep[rows], pairs.kv[pairs.kv_index[rows]])
                    loss = F.mse_loss(output.float(), pairs.target[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
                optimizer.step()
                ema.update(update)
                first_loss = float(loss.detach()) if first_loss is None else first_loss
                progress(update, loss)
                update += 1
        if update < config.updates:
            log.warning("round %d->%d stopped after %d of %d updates: time budget", teacher_steps, student_steps, update, config.updates)
        ema.copy_to_module()
        student.eval().requires_grad_(False)
        errors = self.endpoint_errors(teacher, student, guidance_scale, teacher_steps, student_steps)
        log.info("final latents vs the %d-step teacher (relative RMS, held-out batch): %s", teacher_steps,
                 ", ".join(f"{name} {value:.3f}" for name, value in errors.items()))
        losses = [row["loss"] for row in self.history if row["stage"] == progress.stage]
        figures = {"teacher_steps": teacher_steps, "student_steps": student_steps, "teacher_guidance_scale": guidance_scale,
                   "updates": update, "pairs_per_update": config.batch, "first_loss": first_loss,
                   "final_loss": losses[-1] if losses else None, "endpoint_error_vs_teacher": errors,
                   "teacher_seconds": teacher_seconds, "seconds": time.perf_counter() - started}
        return student, figures


def student_component(family_name: str) -> str:
    """The model directory component of the family's distilled student (its slot's declaration)."""
    family = get_family(family_name)
    return str(family.slot(family.tracks()[DISTILLED_TRACK][0]).component)


def distill(config: DistillConfig, model_dir: Path, out_dir: Path | None = None, device: str = "cpu",
            family_name: str = "unet3d") -> dict[str, Any]:
    """Distil ``model_dir``'s full-precision UNet; the student goes to ``out_dir`` (default ``model_dir``), a copy of
    ``model_dir`` plus the distilled component directory. Returns the log (also written as ``DISTILL_LOG``)."""
    dev, family = torch.device(device), get_family(family_name)
    model_dir, out_dir = Path(model_dir), Path(out_dir or model_dir)
    component = student_component(family_name)
    if out_dir.resolve() != model_dir.resolve():
        shutil.copytree(model_dir, out_dir, ignore=shutil.ignore_patterns(component), dirs_exist_ok=True)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # FP32/TF32: as fast as bf16 here
    run = Distillation(config, family, model_dir, dev)
    grids, rounds, started = config.grid_steps(), [], time.perf_counter()
    student = run.teacher
    for index, (teacher_steps, student_steps) in enumerate(zip(grids, grids[1:])):
        guidance = (config.guidance_scale or run.geometry.presets.guidance_scale) if index == 0 else 1.0  # later teachers: students
        share = (index + 1) / (len(grids) - 1)
        deadline = started + config.max_seconds * share if config.max_seconds else None
        student, figures = run.run_round(student, guidance, teacher_steps, student_steps, deadline)
        rounds.append(figures)
    return _save(family, student, out_dir / component, config, run.track, rounds, run.history, time.perf_counter() - started, dev)


def _save(family: Family, student: nn.Module, directory: Path, config: DistillConfig, teacher_track: str, rounds: list[dict[str, Any]],
          history: list[dict[str, Any]], seconds: float, dev: torch.device) -> dict[str, Any]:
    """The student as a component directory, its track defaults (steps, guidance 1) and the distillation log."""
    shutil.rmtree(directory, ignore_errors=True)
    family.save_denoiser(student, directory)
    steps = rounds[-1]["student_steps"]
    (directory / TRACK_DEFAULTS_FILE).write_text(json.dumps({"STEPS": steps, "GUIDANCE_SCALE": 1.0}, indent=1) + "\n")
    summary = {
        "method": "guidance + step distillation (Salimans & Ho 2022; Meng et al. 2023): one student DDIM step = k guided teacher steps",
        "config": asdict(config),
        "teacher_track": teacher_track,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "rounds": rounds,
        "seconds": seconds,
        "history": history,
    }
    (directory / DISTILL_LOG).write_text(json.dumps(summary, indent=1) + "\n")
    log.info("distilled in %.0f s (%s); student of %d steps saved in %s", seconds,
             ", ".join(f"{r['teacher_steps']}->{r['student_steps']}: {r['updates']} updates, loss {r['first_loss']:.4g} -> "
                       f"{r['final_loss']:.4g}" for r in rounds if r["final_loss"] is not None), steps, directory)
    return summary

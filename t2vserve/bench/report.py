"""Markdown tables from the benchmark JSON (whatever parts are present: cpu, inprocess, served, variants)."""

from __future__ import annotations

from typing import Any

from .tracks import tracks_table
from .variants import variants_table


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def step_cache_rows(r: dict[str, Any]) -> list[str]:
    """'| clip with STEP_CACHE=x: seconds, steps skipped | ... |' per measured threshold (bench.inprocess.step_cache_clips)."""
    return [f"| in-process clip with STEP_CACHE={threshold}: seconds, steps skipped | {c['seconds']:.2f} s "
            f"({r['inprocess_clip_s'] / c['seconds']:.2f}x the clip without), {c['skipped']} of {c['steps']} skipped |"
            for threshold, c in r.get("inprocess_clip_step_cache", {}).items()]


def inprocess_table(r: dict[str, Any]) -> list[str]:
    peak = r.get("bf16_matmul_peak_flops")
    share = lambda s: f"{r['denoiser_step_flop'] / s / peak * 100:.0f}%" if peak else "-"  # noqa: E731
    lines = [
        "| in-process measurement | value | share of measured bf16 peak |", "|---|---|---|",
        f"| diffusers eager clip ({r.get('reference_pipeline', 'diffusers')}) | {r['diffusers_clip_s']:.2f} s | |",
        f"| t2vserve loop in-process, runner modules | {r['inprocess_clip_s']:.2f} s | |",
        f"| clip ratio t2vserve in-process / diffusers | {r['inprocess_clip_s'] / r['diffusers_clip_s']:.2f} | |",
        *(row + " |" for row in step_cache_rows(r)),
        f"| denoiser step (CFG batch 2), stock diffusers (text embeddings), eager | {_ms(r['denoiser_step_stock_eager_s'])} | {share(r['denoiser_step_stock_eager_s'])} |",
        f"| denoiser step, cached K/V, eager | {_ms(r['denoiser_step_cached_kv_eager_s'])} | {share(r['denoiser_step_cached_kv_eager_s'])} |",
        f"| denoiser step, runner (as served) | {_ms(r['denoiser_step_runner_s'])} | {share(r['denoiser_step_runner_s'])} |",
        f"| denoiser FLOP per step (CFG batch 2) | {r['denoiser_step_flop'] / 1e12:.1f} TFLOP | |",
        f"| K/V per request (fp32, both CFG branches) / its projection, once | {r['kv_bytes_per_request_fp32'] / 2**20:.1f} MiB / {_ms(r['kv_projection_s'])} | |",
        f"| VAE decode, eager / runner | {_ms(r['vae_decode_eager_s'])} / {_ms(r['vae_decode_runner_s'])} | |",
        f"| runner denoiser first call (torch.compile included) | {r['runner_denoiser_first_call_s']:.1f} s | |",
    ]
    for key, label in (("diffusers_peak_memory_gb", "diffusers"), ("inprocess_peak_memory_gb", "t2vserve in-process")):
        if key in r:
            lines.append(f"| peak GPU memory allocated, {label} | {r[key]:.1f} GiB | |")
    if peak:
        lines.append(f"| measured bf16 matmul peak (8192^3) | {peak / 1e12:.0f} TFLOP/s | |")
    return lines + [""]


def served_table(served: dict[str, Any], inprocess: float | None, diffusers: float | None) -> list[str]:
    lines = ["| served measurement | value |", "|---|---|", f"| served clip (gRPC, median) | {served['served_clip_s']:.3f} s |"]
    if served.get("served_clip_mp4_only_s"):
        lines.append(f"| served clip, MP4 only (gRPC, median) | {served['served_clip_mp4_only_s']:.3f} s |")
    if served.get("served_clip_untimed_s"):
        lines.append(f"| served clip, the stubs' stage timing off (no CUDA syncs at their marks, as deployed): full / MP4 only | "
                     f"{served['served_clip_untimed_s']:.3f} / {served.get('served_clip_mp4_only_untimed_s', float('nan')):.3f} s |")
    if served.get("encode_mp4_bench_process_s"):
        lines.append(f"| H.264 encode of a served clip's frames in the bench process / postprocess compute per clip | "
                     f"{served['encode_mp4_bench_process_s'] * 1e3:.0f} ms / {served['per_request_compute_ms'].get('postprocess', 0):.0f} ms |")
    full, mp4_only = served.get("per_request_compute_phases_ms", {}).get("postprocess"), served.get("postprocess_phases_mp4_only_ms")
    if full and mp4_only:
        split = " / ".join(f"{row['compute_input_ms']:.1f}, {row['compute_infer_ms']:.1f}, {row['compute_output_ms']:.1f}" for row in (full, mp4_only))
        lines.append(f"| postprocess compute input, infer, output per clip: full response / MP4 only (RETURN_FRAMES false) | {split} ms |")
    if served.get("denoiser_queue_delay_us") is not None:
        lines.append(f"| denoiser dynamic-batcher delay (set by the bench) | {served['denoiser_queue_delay_us']} us |")
    if inprocess:
        lines.append(f"| serving overhead = served / in-process (same runner) | {served['served_clip_s'] / inprocess:.3f} |")
        if served.get("served_clip_mp4_only_s"):
            lines.append(f"| same, the client asking for the MP4 only (no VIDEO frames on the wire) | {served['served_clip_mp4_only_s'] / inprocess:.3f} |")
        lines += untimed_ratio_rows(served, inprocess)
        lines += step_cache_rows(served)  # make bench (cpu part) measures them beside the served clip
    if diffusers:
        lines.append(f"| served / diffusers eager | {served['served_clip_s'] / diffusers:.2f} |")
    lines += [
        f"| denoiser step as served (Triton compute) | {served['denoiser_step_served_ms']:.1f} ms |",
        *denoiser_phase_rows(served),
        *stage_rows(served),
        f"| scheduler overhead per step (BLS round trip + sampler update) | {served['scheduler_overhead_per_step_ms']:.2f} ms |",
        f"| server start -> READY (model load, warm-up of every batch size) | {served.get('start_to_ready_s', float('nan')):.1f} s |",
        f"| first request after READY | {served['first_request_s']:.1f} s |",
        f"| mean denoiser batch (samples per execution) under load | {served['denoiser_mean_batch']:.2f} |",
    ]
    if served.get("peak_gpu_memory_gb"):
        lines.append(f"| peak GPU memory in use (nvidia-smi, whole server) | {served['peak_gpu_memory_gb']:.1f} GiB |")
    tp = {int(k): v for k, v in served.get("throughput_clips_per_s", {}).items()}
    for c in sorted(tp):
        base = tp.get(1)
        ratio = f" ({tp[c] / base:.2f}x concurrency 1)" if base else ""
        lines.append(f"| throughput at concurrency {c} | {tp[c]:.3f} clips/s{ratio} |")
    return lines + work_table(served)


def denoiser_phase_rows(served: dict[str, Any]) -> list[str]:
    """The served denoiser step split as Triton times it: taking the inputs, executing, handing the output over."""
    phases, steps = served.get("per_request_compute_phases_ms", {}), int(served.get("request", {}).get("steps") or 0)
    rows = []
    for entry in served.get("denoiser_entries", []):
        row = phases.get(entry, {})
        if steps and row.get("compute_infer_ms"):
            split = " / ".join(f"{row[f'compute_{p}_ms'] / steps:.2f}" for p in ("input", "infer", "output"))
            rows.append(f"| {entry} per step: compute input / infer / output (Triton statistics) | {split} ms |")
    return rows


def stage_rows(served: dict[str, Any]) -> list[str]:
    """Each entry's stages as its stub timed them (T2V_STAGE_TIMING): per execution, or per request for the loop."""
    rows = []
    for entry, stages in sorted(served.get("stage_ms_per_record", {}).items()):
        split = ", ".join(f"{name} {ms:.2f}" for name, ms in stages.items() if name not in ("records", "batch", "steps", "frames"))
        per = f"request ({stages['steps']:.0f} steps)" if "steps" in stages else "request" if "frames" in stages else "execution"
        rows.append(f"| {entry} in its stub, ms per {per} (CUDA-synchronised on a GPU) | {split} |")
    return rows


def barrier_cell(waits: dict[str, float] | None) -> str:
    """The loops' step-barrier waits per clip (``t2vserve.step_barrier``): count and seconds; - before it existed."""
    return f"{waits.get('waits', 0):.1f} ({waits.get('waited_s', 0) * 1e3:.0f} ms)" if waits is not None else "-"


def split_cell(entries: dict[str, Any]) -> str:
    """Back-to-back executions one batch could have held (``bench.split_batches``): pairs, by sizes; at concurrency 1
    the lone loop's own gap between calls; - before either existed."""
    split, own_gap = entries.get("split_batches"), entries.get("own_call_gap_ms")
    if split is None:
        return f"- (own gap {own_gap:.1f} ms)" if own_gap is not None else "-"
    return f"{split['split_pairs']}" + (f" ({', '.join(f'{k}: {n}' for k, n in split['by_batches'].items())})" if split["by_batches"] else "")


def work_table(served: dict[str, Any]) -> list[str]:
    """Per concurrency, what the denoiser and scheduler did per clip (Triton statistics): the diagnosis of a ratio."""
    work = {int(k): v for k, v in served.get("work_per_clip_by_concurrency", {}).items()}
    if not work:
        return []
    lines = ["", "| concurrency | denoiser executions / clip | mean batch | denoiser compute / clip | denoiser queue / clip | compute per execution by batch size | scheduler compute / clip | step-barrier waits / clip | split batches (pairs) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(work):
        entries = work[c]
        denoiser = next((e for e in served.get("denoiser_entries", []) if entries.get(e, {}).get("executions")), None)
        if denoiser is None:
            continue
        d, sched = entries[denoiser], entries.get("scheduler", {})
        sizes = ", ".join(f"b{size}: {b['count']:.0f} x {b['compute_ms_each']:.0f} ms" for size, b in sorted(d["batches"].items(), key=lambda kv: int(kv[0])))
        lines.append(f"| {c} | {d['executions']:.1f} | {d['inferences'] / max(d['executions'], 1e-9):.2f} | {d['compute_ms'] / 1e3:.2f} s | "
                     f"{d['queue_ms'] / 1e3:.2f} s | {sizes} | {sched.get('compute_ms', 0) / 1e3:.2f} s | {barrier_cell(entries.get('step_barrier'))} | {split_cell(entries)} |")
    return lines


def control_rows(served: dict[str, Any], before: dict[str, Any], after: dict[str, Any] | None) -> list[str]:
    """The in-process side timed again after the served part (``all``): the overhead against both in-process runs."""
    if not after:
        return []
    lines = ["", "| control: in-process again after the served part | value |", "|---|---|",
             f"| runner denoiser step before / after | {_ms(before['denoiser_step_runner_s'])} / {_ms(after['denoiser_step_runner_s'])} |",
             f"| in-process clip before / after | {before['inprocess_clip_s']:.3f} s / {after['inprocess_clip_s']:.3f} s |"]
    for env, seconds in after.get("denoiser_step_subprocess_s", {}).items():
        lines.append(f"| runner denoiser step in a new process, {env} environment | {_ms(seconds)} |")
    if after.get("denoiser_step_runner_nvidia_smi_s"):
        lines.append(f"| runner denoiser step after, while nvidia-smi polls GPU memory (as the served part does) | {_ms(after['denoiser_step_runner_nvidia_smi_s'])} |")
    mean = (before["inprocess_clip_s"] + after["inprocess_clip_s"]) / 2
    lines.append(f"| serving overhead against their mean: full response / MP4 only | {served['served_clip_s'] / mean:.3f} / "
                 f"{served.get('served_clip_mp4_only_s', float('nan')) / mean:.3f} |")
    return lines + untimed_ratio_rows(served, mean) + [""]


def untimed_ratio_rows(served: dict[str, Any], inprocess: float) -> list[str]:
    """Served / in-process with the stubs' stage timing off (as deployed): full response / MP4 only."""
    if not served.get("served_clip_untimed_s"):
        return []
    mp4_only = served.get("served_clip_mp4_only_untimed_s", float("nan")) / inprocess
    return [f"| same, the stubs' stage timing off: full response / MP4 only | {served['served_clip_untimed_s'] / inprocess:.3f} / {mp4_only:.3f} |"]


def variant_rows(runs: dict[str, dict[str, Any]], inprocess: float | None, control: dict[str, Any] | None) -> list[str]:
    """The served latencies again with other settings (``--also-served``), against the in-process clip."""
    if not runs or not inprocess:
        return []
    base = (inprocess + control["inprocess_clip_s"]) / 2 if control else inprocess
    lines = ["", "| served again with | served clip: full / MP4 only | served / in-process: full / MP4 only | "
             "served / in-process, stage timing off: full / MP4 only | loop in its stub per step: own work / BLS | denoiser run in its stub |",
             "|---|---|---|---|---|---|"]
    for variant, r in runs.items():
        stages = r.get("stage_ms_per_record", {})
        loop, denoiser = stages.get("scheduler", {}), next((stages[e] for e in r.get("denoiser_entries", []) if e in stages), {})
        steps = loop.get("steps") or 1
        own = sum(loop.get(stage, 0.0) for stage in ("loop", "update", "inputs"))  # "loop": before the split (round 10)
        split = f"{own / steps:.2f} / {loop['bls'] / steps:.2f} ms" if "bls" in loop else "-"
        run = f"{denoiser['run']:.1f} ms" if "run" in denoiser else "-"
        untimed = (f"{r['served_clip_untimed_s'] / base:.3f} / {r.get('served_clip_mp4_only_untimed_s', float('nan')) / base:.3f}"
                   if r.get("served_clip_untimed_s") else "-")
        lines.append(f"| {variant} | {r['served_clip_s']:.3f} / {r['served_clip_mp4_only_s']:.3f} s | "
                     f"{r['served_clip_s'] / base:.3f} / {r['served_clip_mp4_only_s'] / base:.3f} | {untimed} | {split} | {run} |")
    return lines + [""]


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    inprocess = results.get("inprocess")
    if inprocess:
        lines += inprocess_table(inprocess) if "diffusers_clip_s" in inprocess else []  # --tracks-only: the tracks alone
        lines += tracks_table(inprocess["tracks"], served=False) if inprocess.get("tracks") else []
    served = results.get("served") or results.get("cpu")
    if served:
        base = inprocess or served
        lines += served_table(served, base.get("inprocess_clip_s"), base.get("diffusers_clip_s"))
        lines += control_rows(served, base, results.get("inprocess_control"))
        lines += variant_rows(results.get("served_variants", {}), base.get("inprocess_clip_s"), results.get("inprocess_control"))
        lines += tracks_table(served["tracks"], served=True) if served.get("tracks") else []
    if results.get("variants"):
        lines += variants_table(results["variants"])
    return "\n".join(lines) + "\n"

"""``make quality``'s tracks as data: named request overrides per family, gated only where offered by default."""

from __future__ import annotations

import pytest

from t2vserve.families import FAMILIES, get_family
from t2vserve.quality.metrics import IDENTICAL_PSNR_DB, mean_psnr_db
from t2vserve.quality.report import gate_failures, markdown, verdicts
from t2vserve.quality.variants import QUALITY_SET, Variant, family_variants, load_quality_set
from t2vserve.geometry import KVLayout, ModelGeometry

DRAFT_SET = QUALITY_SET.parent / "quality_set_draft.json"
SWEEPS = [QUALITY_SET.parent / name for name in ("sweep_step_cache.json", "sweep_step_cache_draft.json")]


def _geometry(family: str) -> ModelGeometry:
    f = get_family(family)
    return ModelGeometry(family, f.tiny_preset, 4, 8, 1, 1.0, 77, 32, 100, KVLayout(()), f.tracks(), f.default_precision, ["ddim"])


@pytest.mark.parametrize("path", [QUALITY_SET, DRAFT_SET, *SWEEPS])
def test_every_quality_set_declares_valid_tracks(path) -> None:
    quality_set = load_quality_set(path)
    assert quality_set["prompts"] and quality_set["seeds"] and quality_set["gate"]  # a "base" file lends what a set lacks
    for family in quality_set["families"]:
        assert family in FAMILIES
        reference, variants = family_variants(quality_set, family)
        geometry = _geometry(family)
        for track in (reference, *variants):
            assert track.precision(geometry) in geometry.tracks
            assert track.request("a red circle", 7).seed == 7
        assert not reference.overrides.get("step_cache")  # the reference runs every step


def test_the_default_tracks_are_gated() -> None:
    """Every track a request gets without asking is a default variant of a gated set (the standard tier's int8, the draft tier)."""
    unet3d = {v.name: v for v in family_variants(load_quality_set(), "unet3d")[1]}
    assert unet3d["int8"].default and any(v.overrides.get("step_cache") and not v.default for v in unet3d.values())
    draft = family_variants(load_quality_set(DRAFT_SET), "unet3d")[1]
    assert [(v.overrides, v.default) for v in draft] == [({"preset": "draft"}, True)]


def test_variant_fields_are_request_fields() -> None:
    assert Variant.from_dict({"name": "x", "precision": "fp16", "step_cache": 0.2}).overrides == {"precision": "fp16", "step_cache": 0.2}
    with pytest.raises(ValueError, match="unknown request fields"):
        Variant.from_dict({"name": "x", "stepcache": 0.2})
    with pytest.raises(KeyError, match="no tracks for family"):
        family_variants({"families": {}}, "unet3d")
    assert Variant("d", {"preset": "draft"}).precision(_geometry("unet3d")) == "int8"  # the tier's track


def _summary(psnr: float, default: bool) -> dict:
    adherence = {"seen": {"all": 0.5}, "held_out": {"all": 0.5}}
    return {"mean_psnr_db": psnr, "min_psnr_db": psnr, "mean_ssim": 0.99, "adherence_drop_points": 0.0, "default": default,
            "overrides": {}, "weight_bytes": 1, "denoiser_calls_per_clip": 10.0, "denoiser_ms_per_call": 1.0,
            "mean_latency_s": 1.0, "speedup": 1.0, "adherence": adherence}


def test_gate_fails_the_command_only_for_default_tracks() -> None:
    gate = {"min_mean_psnr_db": 30.0, "min_mean_ssim": 0.95, "max_adherence_drop_points": 2.0}
    summary = {"fast": _summary(25.0, default=False), "int8": _summary(40.0, default=True)}
    report = {"gate": gate, "summary": summary, "family": "unet3d", "repository": "r", "reference": "fp16",
              "reference_weight_bytes_fp16": 1, "tracks": {"fp16": _summary(0.0, False), **summary},
              "clips": [], "readings": [], "adherence": {}}
    assert verdicts(report) == {"fast": ["fast: mean PSNR 25.00 dB < 30.0 dB"], "int8": []}
    assert gate_failures(report) == []
    text = markdown(report, "make quality")
    assert "**pass**" in text and "| fast |" in text and "fail (not default)" in text
    summary["int8"]["mean_ssim"] = 0.9
    assert gate_failures(report) == ["int8: mean SSIM 0.9000 < 0.95"]


def test_identical_clips_enter_the_mean_psnr_at_a_ceiling() -> None:
    assert mean_psnr_db([float("inf"), 40.0]) == pytest.approx((IDENTICAL_PSNR_DB + 40.0) / 2)


def test_gpu_speed_rows_follow_the_quality_variants() -> None:
    """``bench.py variants``: a variant's request takes its track's own defaults (a student's steps and guidance), explicit
    overrides win, and the table joins the CPU report's fidelity to the speed rows by variant name."""
    from dataclasses import replace

    from t2vserve.bench.common import bench_request
    from t2vserve.bench.variants import attach_quality, variant_request, variants_table

    geometry = replace(_geometry("unet3d"), track_defaults={"fp8": {"STEPS": 4, "GUIDANCE_SCALE": 1.0}})
    base = bench_request(geometry, 20, None)
    student = variant_request(geometry, Variant("s", {"precision": "fp8"}), base)
    assert (student.precision, student.steps, student.guidance_scale, student.step_cache) == ("fp8", 4, 1.0, 0.0)
    cached = variant_request(geometry, Variant("c", {"precision": "fp16", "step_cache": 0.2, "steps": 12}), base)
    assert (cached.steps, cached.guidance_scale, cached.step_cache) == (12, base.guidance_scale, 0.2)

    timed = {"clip_s": 2.0, "speedup": 1.5, "kernels": {"unet": "torch bf16"}, "weight_bytes": 2_800_000_000, "steps": 20,
             "denoiser_calls_per_clip": 14, "denoiser_batch": 2, "ms_per_call": 140.0, "overrides": {"precision": "fp16"}, "default": False}
    results = {"family": "unet3d", "reference": "fp16", "variants": {
        "fp16": {**timed, "speedup": 1.0}, "fast": timed, "int8": {"refused": "PRECISION: no INT8 kernels", "overrides": {}, "default": True}}}
    summary = {"fast": _summary(25.0, default=False), "int8": _summary(40.0, default=True)}
    quality = {"family": "unet3d", "repository": "r", "gate": {"min_mean_psnr_db": 30.0, "min_mean_ssim": 0.95, "max_adherence_drop_points": 2.0},
               "summary": summary, "tracks": {"fp16": _summary(0.0, False), **summary}}
    attach_quality(results, quality)
    rows = {line.split(" | ")[0][2:]: line for line in variants_table(results) if line.startswith("| ") and "---" not in line}
    assert "| 2.80 GB | 14 of 20 (batch 2) | 140.0 | 2.00 | 1.50x | 25.00 |" in rows["fast"] and "fail: fast: mean PSNR" in rows["fast"]
    assert "refused: PRECISION: no INT8 kernels" in rows["int8"] and rows["int8"].endswith("| 40.00 | 0.9900 | 50% / 50% | pass |")
    assert "| reference |" in rows["fp16"]
    with pytest.raises(ValueError, match="wan22 report"):
        attach_quality(results, {**quality, "family": "wan22"})


def test_each_family_and_tier_writes_its_own_quality_report() -> None:
    """``make quality MODEL=...`` never overwrites another family's or tier's report."""
    from pathlib import Path

    from t2vserve.families import DEFAULT_FAMILY, FAMILIES
    from t2vserve.quality.report import default_report

    sets = [QUALITY_SET, QUALITY_SET.with_name("quality_set_draft.json")]
    names = {default_report(family, quality_set).name for family in FAMILIES for quality_set in sets}
    assert len(names) == 2 * len(FAMILIES)
    assert default_report(DEFAULT_FAMILY, QUALITY_SET) == Path(QUALITY_SET).parents[2] / "docs" / "quality.md"

"""Clip fidelity metrics: PSNR over the clip, SSIM per frame (averaged), max abs error (uint8 levels)."""

from __future__ import annotations

import numpy as np


def clip_metrics(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Compare two uint8 clips [frames, H, W, 3] (scikit-image's PSNR and SSIM)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if reference.shape != candidate.shape:
        raise ValueError(f"clip shapes differ: {reference.shape} vs {candidate.shape}")
    if np.array_equal(reference, candidate):
        psnr = float("inf")
    else:
        psnr = float(peak_signal_noise_ratio(reference, candidate, data_range=255))
    ssim = float(np.mean([structural_similarity(r, c, channel_axis=2, data_range=255) for r, c in zip(reference, candidate)]))
    max_abs = int(np.abs(reference.astype(np.int16) - candidate.astype(np.int16)).max())
    return {"psnr_db": psnr, "ssim": ssim, "max_abs_error": max_abs}


#: An identical clip's PSNR (infinite) as it enters a mean: above any clip that differs at all (one level in one
#: pixel of a 64x64, 8-frame clip is 98 dB), so a variant that leaves some clips unchanged gets a finite mean.
IDENTICAL_PSNR_DB = 100.0


def mean_psnr_db(values: list[float]) -> float:
    """Mean PSNR over clips, identical clips counted as IDENTICAL_PSNR_DB."""
    return float(np.mean([min(v, IDENTICAL_PSNR_DB) for v in values]))

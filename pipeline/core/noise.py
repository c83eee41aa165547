"""The noise level of an image without ground truth: σ̂, in 0-255 units, per channel and overall.

A robust wavelet estimator (Donoho's median absolute deviation of the finest diagonal wavelet
coefficients, σ̂ = median(|HH|) / 0.6745), as scikit-image's ``estimate_sigma`` computes it. The
image content barely reaches those coefficients, so the estimate follows the noise; heavy texture
biases it upwards, clipping at 0 and 1 downwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NoiseLevel:
    """σ̂ in 0-255 units: ``per_channel`` (one per colour channel) and ``sigma`` (their mean)."""

    sigma: float
    per_channel: tuple[float, ...]


def estimate_noise(pixels) -> NoiseLevel:
    """σ̂ of ``pixels`` [1, C, H, W] in [0, 1] (a torch tensor or numpy array), 0-255 units."""
    from skimage.restoration import estimate_sigma

    array = np.asarray(pixels, dtype=np.float64)
    if array.ndim != 4 or array.shape[0] != 1 or min(array.shape[2:]) < 2:
        raise ValueError(f"estimate_noise needs pixels [1, C, H, W] with H, W >= 2, got {list(array.shape)}")
    planes = array[0].transpose(1, 2, 0)  # (H, W, C)
    sigmas = estimate_sigma(planes, channel_axis=-1, average_sigmas=False)
    per_channel = tuple(float(s) * 255 for s in np.atleast_1d(sigmas))
    return NoiseLevel(sigma=float(np.mean(per_channel)), per_channel=per_channel)

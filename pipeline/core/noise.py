"""The noise level of an image without ground truth: σ̂, in 0-255 units, per channel and overall.

Donoho's robust wavelet estimator: σ̂ = median(|HH|) / 0.6745 over the finest diagonal wavelet
coefficients HH, which white noise of std σ fills with std σ and the image content barely reaches.
Texture does reach them, and raises σ̂ (by a third at σ 5 on the suite's images, over the whole
image); so on images large enough, it is taken where the image is flattest:

1. HH of each channel by the Haar wavelet: (a - b - c + d) / 2 over each 2x2 pixels (a b / c d).
2. σ of each block of ``BLOCK`` x ``BLOCK`` coefficients, leaving out blocks with pixels clipped
   at 0 or 1 (clipping lowers the noise there, and flat dark or bright blocks would be chosen).
3. σ̂ = the ``QUANTILE`` of the blocks' σ, divided by the same statistic of Gaussian noise of std
   1 on a grid of that size (a seeded draw, so the estimate is deterministic): texture raises a
   block's σ and never lowers it, so the flatter blocks tell the noise.

Images with fewer than ``MIN_BLOCKS`` blocks (under about 256x256 px), where a low quantile of
few blocks is itself noisy, use scikit-image's ``estimate_sigma`` over the whole image (the db2
wavelet). ``benchmarks/archive.py`` measures both on the suite's images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

BLOCK = 16  # coefficients a side (32 px)
QUANTILE = 0.1  # of the blocks' σ
MIN_BLOCKS = 64  # fewer usable blocks: the whole image at once
MAD_TO_SIGMA = 1 / 0.6745  # median(|x|) of a Gaussian of std 1
CLIP_LEVEL = 0.5 / 65535  # a pixel this close to 0 or 1 was clipped (or is black or white)
CLIPPED_SHARE = 0.3  # blocks with more of their 2x2 cells clipped (saturated areas) are left out


@dataclass(frozen=True)
class NoiseLevel:
    """σ̂ in 0-255 units: ``per_channel`` (one per colour channel) and ``sigma`` (their mean)."""

    sigma: float
    per_channel: tuple[float, ...]


def estimate_noise(pixels) -> NoiseLevel:
    """σ̂ of ``pixels`` [1, C, H, W] in [0, 1] (a torch tensor or numpy array), 0-255 units."""
    array = np.asarray(pixels, dtype=np.float64)
    if array.ndim != 4 or array.shape[0] != 1 or min(array.shape[2:]) < 2:
        raise ValueError(f"estimate_noise needs pixels [1, C, H, W] with H, W >= 2, got {list(array.shape)}")
    per_channel = tuple(_sigma(plane) * 255 for plane in array[0])
    return NoiseLevel(sigma=float(np.mean(per_channel)), per_channel=per_channel)


def _sigma(plane: np.ndarray) -> float:
    """σ of the noise in ``plane`` (H, W), [0, 1] units."""
    from skimage.restoration import estimate_sigma

    h, w = plane.shape[0] // 2 * 2, plane.shape[1] // 2 * 2
    a, b, c, d = plane[0:h:2, 0:w:2], plane[0:h:2, 1:w:2], plane[1:h:2, 0:w:2], plane[1:h:2, 1:w:2]
    diagonal = (a - b - c + d) / 2  # (h/2, w/2)
    clipped = np.minimum.reduce([np.minimum(x, 1 - x) for x in (a, b, c, d)]) <= CLIP_LEVEL  # a pixel at 0 or 1
    usable = _blocks(clipped, BLOCK).mean(axis=1) <= CLIPPED_SHARE
    if usable.sum() < MIN_BLOCKS:
        return float(estimate_sigma(plane))
    sigmas = np.median(np.abs(_blocks(diagonal, BLOCK)[usable]), axis=1) * MAD_TO_SIGMA
    return float(np.quantile(sigmas, QUANTILE)) / _unit_quantile(int(usable.sum()))


def _blocks(values: np.ndarray, block: int) -> np.ndarray:
    """``values`` (h, w) cut into whole ``block`` x ``block`` blocks: (blocks, block * block)."""
    h, w = values.shape[0] // block * block, values.shape[1] // block * block
    return values[:h, :w].reshape(h // block, block, w // block, block).transpose(0, 2, 1, 3).reshape(
        -1, block * block)


@lru_cache(maxsize=256)
def _unit_quantile(count: int) -> float:
    """The ``QUANTILE`` of ``count`` block estimates of Gaussian noise of std 1 (seeded, averaged
    over draws of 4096 blocks or more): the factor by which a low quantile of blocks under-reads σ."""
    rng = np.random.default_rng(0)
    draws = max(1, -(-4096 // count))
    sigmas = np.median(np.abs(rng.standard_normal((draws, count, BLOCK * BLOCK))), axis=2) * MAD_TO_SIGMA
    return float(np.mean(np.quantile(sigmas, QUANTILE, axis=1)))

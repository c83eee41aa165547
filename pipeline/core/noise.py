"""The noise level of an image without ground truth: σ̂, in 0-255 units, per channel and overall.

Two estimators, measured on the suite's images by ``python -m benchmarks.archive``:

- Images large enough (``MIN_BLOCKS`` usable blocks, 192x192 px and up): the principal
  components of the patches of the image's flattest blocks (Chen, Zhu, Heng, "An Efficient
  Statistical Method for Image Noise Level Estimation", ICCV 2015), per channel:

  1. The plane is cut into ``BLOCK`` x ``BLOCK`` px blocks; blocks with more than ``CLIPPED_SHARE``
     of their pixels clipped at 0 or 1 are left out (clipping lowers the noise there, so flat dark
     or bright blocks would be chosen).
  2. Each block's texture: the median absolute diagonal difference (a - b - c + d over each 2x2
     neighbourhood) of the plane blurred by a Gaussian of ``SMOOTH`` px. The ``QUANTILE`` flattest
     blocks are kept (``MIN_FLAT`` at least). Ranked on the unblurred plane, the blocks with the
     weakest noise rank flattest: under film grain, whose variance grows with the signal, the
     darkest ones, and σ̂ came out 5% and 8% low at σ 12 and 20 on the suite's synthetic scans
     (1% and 6% with the blur). More blur lets fine texture rank flat and raises σ̂ at σ 5.
  3. The covariance of all ``PATCH`` x ``PATCH`` patches of the kept blocks, and its eigenvalues.
     White noise of std σ adds σ² to every eigenvalue; what texture is left in flat blocks lies in
     a few large ones. σ̂² = the mean of the smallest eigenvalues: the longest run of them whose mean
     is also its median (the paper's rule: a tail of noise-only eigenvalues is symmetric about σ²).

  Among blocks of equal texture the ranking takes those whose noise happens to be weakest, so on a
  smooth gradient σ̂ comes out 7-9% low (σ 5-25). That errs on the side the discrepancy rule can
  afford: a σ̂ too low stops it later, towards the fixed budget, while one 5% too high put it 1.6 dB
  below the oracle at full size (``python -m benchmarks.stop_rules``). Ranking on one half of each block
  and estimating on the other removes the bias, but then σ̂ reads +14% at σ 5 on the suite's images
  instead of +9%.

  Choosing flat blocks alone (the previous estimator: a low quantile of each block's wavelet σ)
  still read the texture that every block of a furry or grainy image has as noise (+52% at σ 5 on
  baboon); the eigenvalues put that texture aside.
- Smaller images, where a few blocks' patches are themselves too few: Donoho's robust wavelet
  estimator over the whole image (σ̂ = median(|HH|) / 0.6745 over the finest diagonal wavelet
  coefficients, scikit-image's ``estimate_sigma``), which texture raises.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

BLOCK = 24  # px a side
QUANTILE = 0.1  # the share of usable blocks kept, the flattest
SMOOTH = 1.0  # px, the Gaussian blur under which blocks are ranked by texture
MIN_FLAT = 8  # blocks kept at least
PATCH = 7  # px a side of the patches whose covariance is taken
MIN_BLOCKS = 64  # fewer usable blocks: the whole image at once, by scikit-image's wavelet estimator
CLIP_LEVEL = 0.5 / 65535  # a pixel this close to 0 or 1 was clipped (or is black or white)
CLIPPED_SHARE = 0.05  # blocks with more of their pixels clipped (saturated areas) are left out
CHUNK = 256  # blocks whose patches are gathered at once (bounds the memory on a 12 MP scan)


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
    from skimage.filters import gaussian
    from skimage.restoration import estimate_sigma

    blocks = _blocks(plane, BLOCK)  # (n, BLOCK, BLOCK); n = 0 on an image smaller than a block
    clipped = np.minimum(blocks, 1 - blocks) <= CLIP_LEVEL
    usable = clipped.reshape(len(blocks), BLOCK * BLOCK).mean(axis=1) <= CLIPPED_SHARE
    if usable.sum() < MIN_BLOCKS:
        return float(estimate_sigma(plane))
    blocks = blocks[usable]
    smooth = _blocks(gaussian(plane, sigma=SMOOTH), BLOCK)[usable]  # the texture, with little of the noise
    diagonal = smooth[:, 1:, 1:] - smooth[:, :-1, 1:] - smooth[:, 1:, :-1] + smooth[:, :-1, :-1]
    texture = np.median(np.abs(diagonal).reshape(len(blocks), -1), axis=1)
    flat = blocks[np.argsort(texture, kind="stable")[:max(MIN_FLAT, int(len(blocks) * QUANTILE))]]
    return float(np.sqrt(max(_noise_eigenvalue(flat), 0.0)))


def _noise_eigenvalue(blocks: np.ndarray) -> float:
    """σ² from the eigenvalues of the covariance of every ``PATCH`` x ``PATCH`` patch of ``blocks``
    (n, B, B): the mean of the longest run of the smallest eigenvalues whose mean is its median."""
    dims = PATCH * PATCH
    total, outer, count = np.zeros(dims), np.zeros((dims, dims)), 0
    for start in range(0, len(blocks), CHUNK):
        patches = sliding_window_view(blocks[start:start + CHUNK], (PATCH, PATCH), axis=(1, 2)).reshape(-1, dims)
        total += patches.sum(axis=0)
        outer += patches.T @ patches
        count += len(patches)
    mean = total / count
    eigenvalues = np.linalg.eigvalsh(outer / count - np.outer(mean, mean))[::-1]  # descending
    for first in range(dims):
        tail = eigenvalues[first:]
        tau = tail.mean()
        if (tail > tau).sum() == (tail < tau).sum():
            return float(tau)
    return float(eigenvalues[-1])


def _blocks(values: np.ndarray, block: int) -> np.ndarray:
    """``values`` (h, w) cut into whole ``block`` x ``block`` blocks: (blocks, block, block)."""
    h, w = values.shape[0] // block * block, values.shape[1] // block * block
    return values[:h, :w].reshape(h // block, block, w // block, block).transpose(0, 2, 1, 3).reshape(
        -1, block, block)

"""Synthetic degradations: a degraded observation made from a clean image, for evaluations.

Besides the operators' own degradations (``noise:``, ``downsample:``, ``mask:bernoulli:``,
``jpeg:``), a model of an archive scan (``archive:SIGMA``, ``grain:SIGMA``): film grain, dust and
scratches, with the ground-truth defect mask kept (``plant_defects``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .images import Picture
from .operators import Denoise, Inpainting, JpegArtifacts, SuperResolution, bernoulli_mask, parse_degradation


@dataclass
class Synthetic:
    """A degraded observation made from a clean image, ready for ``restore``."""

    observed: Picture
    reference: Picture
    task: str
    mask: Picture | None = None
    scale: int | None = None
    defects: Picture | None = None  # archive: the planted defects, in the --mask convention (white = clean)
    sigma: float | None = None  # archive: the grain's true RMS, 0-255 units


def synthesize(clean: Picture, spec: str, seed: int) -> Synthetic:
    """Degrade ``clean`` by a spec (``noise:25``, ``downsample:4``, ``mask:bernoulli:0.5``,
    ``jpeg:10``) with a generator seeded by ``seed``. For ``downsample`` the clean image is
    cropped (top-left) to a multiple of the scale first."""
    kind, value = parse_degradation(spec)
    generator = torch.Generator().manual_seed(seed)
    x = clean.pixels
    if kind == "noise":
        return Synthetic(_like(clean, Denoise(value).degrade(x, generator)), clean, "denoise")
    if kind in ("archive", "grain"):
        observed, defects, sigma = archive_scan(x, value, defects=kind == "archive", seed=seed)
        return Synthetic(_like(clean, observed), clean, "archive",
                         defects=Picture(pixels=defects, alpha=None, bit_depth=8), sigma=sigma)
    if kind == "jpeg":
        return Synthetic(_like(clean, JpegArtifacts(int(value)).degrade(x, generator)), clean, "jpeg")
    if kind == "downsample":
        s = int(value)
        h, w = clean.height // s * s, clean.width // s * s
        if h == 0 or w == 0:
            raise ValueError(f"image {clean.width}x{clean.height} is smaller than the scale {s}")
        crop = Picture(pixels=x[..., :h, :w], alpha=None, bit_depth=clean.bit_depth, metadata=clean.metadata)
        low = SuperResolution(s, x.shape[1]).degrade(crop.pixels, generator)
        return Synthetic(_like(clean, low), crop, "sr", scale=s)
    mask = bernoulli_mask(clean.height, clean.width, value, generator)
    observed = Inpainting(mask).degrade(x, generator)
    return Synthetic(_like(clean, observed), clean, "inpaint", mask=Picture(pixels=mask, alpha=None, bit_depth=8))


def _like(clean: Picture, pixels: Tensor) -> Picture:
    return Picture(pixels=pixels, alpha=None, bit_depth=clean.bit_depth, metadata=clean.metadata)


# -----------------------------------------------------------------------------
# archive scans: grain, dust and scratches

SPECKS_PER_MEGAPIXEL = 160  # dust specks, 1-6 px across (about 40 on a 512x512 image)
SCRATCHES = (1, 3)  # thin lines per image (1-3 px wide), one of them near vertical (a film scratch)
VISIBLE = 0.1  # a pixel is a defect pixel where the defect changed it by at least this much (26 levels)


def archive_scan(clean: Tensor, sigma: float, *, defects: bool, seed: int) -> tuple[Tensor, Tensor, float]:
    """A synthetic archive scan of ``clean`` [1, C, H, W]: ``plant_defects`` (when ``defects``), then
    grain of ``sigma`` (0-255 units at mid grey) whose variance grows with the signal, half of it
    constant and half proportional (std = sigma * sqrt(0.5 + x)), clipped to [0, 1].

    Returns (observed, defect mask [1, 1, H, W] with 1 = clean pixel, the grain's RMS over the
    image before clipping in 0-255 units)."""
    rng = np.random.default_rng(seed)
    image = clean.detach().cpu().double().numpy()[0]  # (C, H, W)
    keep = np.ones(image.shape[1:], dtype=bool)
    if defects:
        image, keep = plant_defects(image, rng)
    std = sigma / 255 * np.sqrt(0.5 + image)  # (C, H, W)
    observed = np.clip(image + rng.standard_normal(image.shape) * std, 0, 1)
    true_sigma = float(np.sqrt(np.mean(std ** 2)) * 255)
    return (torch.from_numpy(observed[None]).float(), torch.from_numpy(keep[None, None].astype(np.float32)),
            true_sigma)


def plant_defects(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dust specks (discs 1-6 px across, opaque or nearly) and scratches (lines 1-3 px wide across
    much of the image, one near vertical) on ``image`` (C, H, W) in [0, 1], each dark or bright and
    anti-aliased. Returns (the image with defects, keep: (H, W) True where no defect changed the
    pixel by ``VISIBLE`` or more)."""
    _, h, w = image.shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    out = image.copy()
    count = rng.poisson(SPECKS_PER_MEGAPIXEL * h * w / 1e6)
    for _ in range(count):
        radius = rng.uniform(0.5, 3.0)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        alpha = rng.uniform(0.8, 1.0) * np.clip(radius + 0.5 - np.hypot(rows - cy, cols - cx), 0, 1)
        out = _blend(out, alpha, rng)
    for k in range(rng.integers(SCRATCHES[0], SCRATCHES[1] + 1)):
        angle = rng.normal(math.pi / 2, 0.03) if k == 0 else rng.uniform(0, math.pi)
        length = rng.uniform(0.4, 1.0) * math.hypot(h, w)
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        dy, dx = math.sin(angle), math.cos(angle)
        along = (rows - cy) * dy + (cols - cx) * dx  # distance along the line from its centre
        across = np.abs(-(rows - cy) * dx + (cols - cx) * dy)  # distance from the line
        half = rng.uniform(0.5, 1.5)  # width 1-3 px
        inside = np.clip(half + 0.5 - across, 0, 1) * np.clip(length / 2 + 0.5 - np.abs(along), 0, 1)
        out = _blend(out, rng.uniform(0.6, 1.0) * inside, rng)
    keep = np.abs(out - image).max(axis=0) < VISIBLE
    return out, keep


def _blend(image: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` with a dark (0-0.12) or bright (0.88-1) grey defect laid over it at ``alpha`` (H, W)."""
    tone = rng.uniform(0.0, 0.12) if rng.random() < 0.5 else rng.uniform(0.88, 1.0)
    return image * (1 - alpha) + tone * alpha

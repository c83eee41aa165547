"""Synthetic degradations: a degraded observation made from a clean image, for evaluations."""

from __future__ import annotations

from dataclasses import dataclass

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


def synthesize(clean: Picture, spec: str, seed: int) -> Synthetic:
    """Degrade ``clean`` by a spec (``noise:25``, ``downsample:4``, ``mask:bernoulli:0.5``,
    ``jpeg:10``) with a generator seeded by ``seed``. For ``downsample`` the clean image is
    cropped (top-left) to a multiple of the scale first."""
    kind, value = parse_degradation(spec)
    generator = torch.Generator().manual_seed(seed)
    x = clean.pixels
    if kind == "noise":
        return Synthetic(_like(clean, Denoise(value).degrade(x, generator)), clean, "denoise")
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

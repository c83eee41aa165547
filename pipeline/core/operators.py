"""Forward operators A: what the camera (or the archive) did to the clean image.

Every operator is an ``nn.Module`` with one interface:

- ``forward(x)``: ``A(x)`` for a candidate image ``x`` [1, C, H, W] in [0, 1], giving a tensor
  in observation space (the loss is ``‖A(f(z)) − y‖²``);
- ``image_size(obs_height, obs_width)``: the size (H, W) of the image to reconstruct from an
  observation of the given size;
- ``degrade(clean, generator)``: a degraded observation made from a clean image, for
  evaluations with ground truth (seeded by a ``torch.Generator``);
- ``observes_image``: whether the observation is an image (PSNR against it means something;
  False for feature inversion, whose observation is a CNN's activations);
- ``noise_floor(sigma)``: the residual the observation's noise alone leaves (the discrepancy rule);
- ``stack(operators)``: one operator for a pack of N images (``pipeline.core.packed``).

A new task is a new operator, not a new loop.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn


class Operator(nn.Module):
    """Base class: identity, no degradation of its own."""

    observes_image = True  # the observation y is an image in [0, 1] (not a feature map)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def noise_floor(self, sigma: float) -> float:
        """The residual RMS ‖A(x) − y‖ / √size that noise of std ``sigma`` leaves when x is the clean
        image: ``sigma`` for an operator that observes every pixel."""
        return sigma

    def stack(self, operators: list["Operator"]) -> "Operator":
        """The operator for a pack of N images, one per image in ``operators`` (this one among
        them): this one, shared, for an operator without per-image data."""
        return self

    def image_size(self, obs_height: int, obs_width: int) -> tuple[int, int]:
        return obs_height, obs_width

    def degrade(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        raise ValueError(f"{type(self).__name__} has no synthetic degradation; give an observed image")


class Denoise(Operator):
    """A = identity; the degradation adds Gaussian noise of ``sigma`` (0-255 units), clipped to [0, 1]."""

    def __init__(self, sigma: float = 25.0):
        super().__init__()
        if not sigma >= 0:
            raise ValueError(f"noise sigma must be >= 0 (0-255 units), got {sigma!r}")
        self.sigma = float(sigma)

    def degrade(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        noise = torch.randn(clean.shape, generator=generator, dtype=torch.float32)
        return (clean + noise.to(clean) * self.sigma / 255.0).clamp(0, 1)


class JpegArtifacts(Operator):
    """Blind JPEG-artifact removal: A = identity; the degradation is a JPEG round trip at ``quality``."""

    def __init__(self, quality: int = 10):
        super().__init__()
        if not 1 <= int(quality) <= 95:
            raise ValueError(f"JPEG quality must be in 1..95, got {quality!r}")
        self.quality = int(quality)

    def degrade(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        buffer = io.BytesIO()
        to_pil(clean).save(buffer, format="JPEG", quality=self.quality)
        return from_pil(Image.open(buffer)).to(clean)


class Inpainting(Operator):
    """Inpainting and missing pixels: A(x) = x ⊙ m with a mask m [1, 1, H, W] (1 = known pixel);
    [N, 1, H, W] for a pack of N images, one mask each."""

    def __init__(self, mask: Tensor):
        super().__init__()
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"mask must have shape [1, 1, H, W], got {list(mask.shape)}")
        if (mask.flatten(1).sum(1) == 0).any():
            raise ValueError("mask has no known pixel (all black): nothing to fit")
        self.register_buffer("mask", (mask > 0.5).float())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mask.to(x.dtype)

    def noise_floor(self, sigma: float) -> float:
        """Only the known pixels carry noise into the residual: sigma √(known fraction)."""
        return sigma * float(self.mask.mean()) ** 0.5

    def stack(self, operators: list[Operator]) -> "Inpainting":
        """The N masks stacked: [N, 1, H, W], image n masked by its own."""
        return Inpainting(torch.cat([operator.mask for operator in operators]))

    def degrade(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        if clean.shape[-2:] != self.mask.shape[-2:]:
            raise ValueError(f"mask is {tuple(self.mask.shape[-2:])} but the image is {tuple(clean.shape[-2:])}")
        return self.forward(clean)


def bernoulli_mask(height: int, width: int, p_known: float, generator: torch.Generator) -> Tensor:
    """A random mask [1, 1, H, W] keeping each pixel with probability ``p_known``."""
    if not 0 < p_known <= 1:
        raise ValueError(f"the fraction of known pixels must be in (0, 1], got {p_known!r}")
    return (torch.rand((1, 1, height, width), generator=generator) < p_known).float()


def lanczos2_kernel(factor: int) -> Tensor:
    """The reference code's Lanczos-2 anti-aliasing kernel for downsampling by ``factor``:
    a [4f, 4f] kernel (phase 1/2), normalised to sum 1."""
    size = 4 * factor
    centre = (size + 2) / 2  # (kernel_width + 1) / 2 with kernel_width = 4f + 1
    d = np.abs(np.arange(1, size + 1) + 0.5 - centre) / factor
    with np.errstate(divide="ignore", invalid="ignore"):
        taps = np.where(d == 0, 1.0, 2 * np.sin(np.pi * d) * np.sin(np.pi * d / 2) / (np.pi**2 * d**2))
    kernel = np.outer(taps, taps)
    return torch.from_numpy(kernel / kernel.sum()).float()


class SuperResolution(Operator):
    """A = a fixed Lanczos-2 anti-aliased downsampler by an integer ``scale`` (replicate-padded
    so that an [H, W] image gives [H/scale, W/scale]). The degradation is Pillow's LANCZOS
    resize, as the paper's authors made their low-res inputs."""

    def __init__(self, scale: int, channels: int = 3):
        super().__init__()
        if int(scale) != scale or not 2 <= scale <= 16:
            raise ValueError(f"super-resolution scale must be an integer in 2..16, got {scale!r}")
        self.scale = int(scale)
        kernel = lanczos2_kernel(self.scale)
        self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape).contiguous())

    def forward(self, x: Tensor) -> Tensor:
        total = 3 * self.scale  # kernel 4s, stride s: pad 3s in all keeps H/s exactly
        pad = (total // 2, total - total // 2)
        x = F.pad(x, (*pad, *pad), mode="replicate")
        kernel = self.kernel[: x.shape[1]].to(x.dtype)
        return F.conv2d(x, kernel, stride=self.scale, groups=x.shape[1])

    def image_size(self, obs_height: int, obs_width: int) -> tuple[int, int]:
        return obs_height * self.scale, obs_width * self.scale

    def degrade(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        h, w = clean.shape[-2:]
        if h % self.scale or w % self.scale:
            raise ValueError(f"image size {w}x{h} is not divisible by scale {self.scale}; crop it first")
        small = to_pil(clean).resize((w // self.scale, h // self.scale), Image.Resampling.LANCZOS)
        return from_pil(small).to(clean)


class FeatureInversion(Operator):
    """A = the activations of a CNN layer (see ``pipeline.core.features``); the image size is fixed."""

    observes_image = False

    def __init__(self, extractor: nn.Module, height: int, width: int):
        super().__init__()
        self.extractor = extractor
        self.size = (int(height), int(width))

    def forward(self, x: Tensor) -> Tensor:
        return self.extractor(x)

    def image_size(self, obs_height: int, obs_width: int) -> tuple[int, int]:
        return self.size

    def degrade(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            return self.forward(clean)


def parse_degradation(spec: str) -> tuple[str, float]:
    """Parse a degradation spec, as written in manifests and on the command line ("noise:25",
    "downsample:4", "mask:bernoulli:0.5", "jpeg:10", and the archive scan model of
    ``pipeline.core.synthetic``: "archive:12" grain and defects, "grain:12" grain only), into
    (kind, value); raises ValueError naming the spec."""
    parts = str(spec).strip().split(":")
    try:
        if parts[0] in ("noise", "archive", "grain") and len(parts) == 2:
            value = float(parts[1])
        elif parts[0] == "downsample" and len(parts) == 2:
            value = int(parts[1])
        elif parts[0] == "mask" and len(parts) == 3 and parts[1] == "bernoulli":
            value = float(parts[2])
        elif parts[0] == "jpeg" and len(parts) == 2:
            value = int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"bad degradation spec {spec!r}: expected noise:SIGMA, downsample:SCALE, "
            "mask:bernoulli:P_KNOWN, jpeg:QUALITY, archive:SIGMA or grain:SIGMA"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"bad degradation spec {spec!r}: the value must be positive")
    return parts[0], value


def to_pil(x: Tensor) -> Image.Image:
    """[1, C, H, W] in [0, 1] (C = 1 or 3) to an 8-bit Pillow image."""
    array = (x[0].detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))


def from_pil(image: Image.Image) -> Tensor:
    """An 8-bit L or RGB Pillow image to [1, C, H, W] float32 in [0, 1]."""
    array = np.asarray(image.convert("L" if image.mode == "L" else "RGB"), dtype=np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))[None]

"""One fit made ready, and its result scored: what ``restore`` (``pipeline.core.restore``) and
``restore_many`` (``pipeline.core.packed``) share.

    prepare(observed, options)   check_inputs -> [archive_mask] -> build_operator -> seeded input and
                                 network -> noise level: a ``Prepared`` job
    finish(job, fit_result)      score against the reference, carry alpha and metadata: a ``Restoration``
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .baselines import degraded_input, tv_restore
from .defects import detect_defects
from .features import feature_extractor
from .fit import FitResult
from .images import Picture, resize_alpha
from .metadata import scaled_dpi
from .metrics import score
from .nets import build_net, grid_size, make_input
from .noise import estimate_noise
from .operators import Denoise, FeatureInversion, Inpainting, JpegArtifacts, Operator, SuperResolution
from .options import Options
from .presets import Preset


@dataclass
class Restoration:
    """What ``restore`` returns: the restored picture, the fit, the resolved preset and the scores."""

    picture: Picture  # the restored image, alpha carried through, at the input's bit depth
    fit: FitResult
    preset: Preset
    metrics: dict  # psnr, ssim, psnr_y (sr), psnr_input: dB / [0, 1]; None without a reference
    mask: Picture | None = None  # archive: the mask the fit used (white = kept, black = filled)
    restart_psnr: list | None = None  # restarts: each fit's PSNR, dB (None entries without a reference)

    def summary(self) -> dict:
        """Metrics and timings as plain JSON-able values."""
        extra = {} if self.restart_psnr is None else {"restart_psnr": self.restart_psnr}
        return {
            **extra,
            "task": self.preset.task,
            "preset": self.preset.name,
            **self.metrics,
            "iterations": self.fit.iterations,
            "best_iteration": self.fit.best_iteration,
            "stopped_early": self.fit.stopped_early,
            "backtracks": self.fit.backtracks,
            "seconds": round(self.fit.seconds, 3),
            "iterations_per_second": round(self.fit.iterations_per_second, 2),
            "stop_rule": self.preset.fit.early_stop.rule if self.preset.fit.early_stop else "fixed",
            "width": self.picture.width,
            "height": self.picture.height,
        }


def check_inputs(observed: Picture, options: Options, *, mask: Picture | None = None,
                 guide: Picture | None = None) -> None:
    """What the task needs (``Options.check_complete``), and a mask and guide of the image's size."""
    options.check_complete(has_mask=mask is not None, has_guide=guide is not None)
    for name, picture in (("mask", mask), ("guide", guide)):
        if picture is not None and (picture.height, picture.width) != (observed.height, observed.width):
            raise ValueError(f"{name} is {picture.width}x{picture.height} but the image is "
                             f"{observed.width}x{observed.height}")


@dataclass
class Prepared:
    """Everything one fit needs, on the CPU: what ``restore`` fits and ``restore_many`` stacks."""

    observed: Picture
    options: Options
    preset: Preset
    operator: Operator
    y: Tensor  # [1, C, h, w] the observation in the operator's output space
    z: Tensor  # [1, Cz, H', W'] the network input on its grid
    net: torch.nn.Module
    reference: Tensor | None  # [1, C, H, W]
    height: int
    width: int
    noise_sigma: float | None  # σ̂ of the observation, 0-255 units (None: the observation is no image)
    noise_floor: float  # the residual RMS the noise alone leaves, [0, 1] units (the discrepancy rule's; NaN: unknown)
    mask: Picture | None = None  # archive: the mask used


def prepare(observed: Picture, options: Options, *, mask: Picture | None = None, reference: Picture | None = None,
            guide: Picture | None = None) -> Prepared:
    """Steps 1-3 of ``restore``: the operator, the observation, the seeded input and network, the
    noise level."""
    check_inputs(observed, options, mask=mask, guide=guide)
    preset = options.resolve()
    y = observed.pixels  # [1, C, h, w] in [0, 1]

    # 1. The forward operator, and the observation in its space.
    if options.task == "archive":
        mask = archive_mask(observed, options, mask)
    operator = build_operator(options, observed, mask)
    height, width = operator.image_size(*y.shape[-2:])
    if options.task == "archive":  # the defects' pixels leave the data term (and the residual)
        y = operator(y)
    if not operator.observes_image:  # feature inversion: the input is the image whose features to invert
        reference = reference or observed
        y = operator.degrade(observed.pixels, torch.Generator())

    # 2. The network input z on the network's grid, and the network (both seeded).
    grid = grid_size(height, width, preset.net.depth)
    if preset.input_kind == "image":
        z = _guide_input(guide, height, width, grid)
    else:
        generator = torch.Generator().manual_seed(options.seed)
        z = make_input(preset.input_kind, preset.input_channels, *grid, generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        net = build_net(replace(preset.net, in_channels=z.shape[1], out_channels=observed.channels))
    ref = check_reference(reference, observed.channels, height, width)

    # 3. The noise level, estimated from the observation (no ground truth needed).
    noise_sigma = noise_sigma_of(observed) if operator.observes_image else None
    floor = math.nan if noise_sigma is None else operator.noise_floor(noise_sigma / 255)  # NaN: unknown
    return Prepared(observed, options, preset, operator, y, z, net, ref, height, width, noise_sigma, floor,
                    mask if options.task == "archive" else None)


def finish(job: Prepared, result: FitResult) -> Restoration:
    """Step 4 of ``restore``: score against the reference, carry alpha through."""
    options, observed, ref, y = job.options, job.observed, job.reference, job.y
    baselines = {}
    if ref is not None and options.task in ("denoise", "sr", "inpaint", "jpeg", "archive"):
        seen = observed.pixels if options.task == "archive" else y.cpu()  # archive: the scan as it came
        baselines["baseline"] = degraded_input(job.operator, seen)
        if options.tv_baseline:
            baselines["tv"] = tv_restore(job.operator.cpu().float(), y.cpu().float(), noise_sigma=job.noise_sigma)
    metrics = {**score(options.task, result.image, ref, observed.pixels, baselines),
               "noise_sigma": job.noise_sigma}
    if job.mask is not None:
        metrics["defect_fraction"] = masked_fraction(job.mask)
    picture = Picture(pixels=result.image, alpha=resize_alpha(observed.alpha, job.height, job.width),
                      bit_depth=observed.bit_depth,
                      metadata=scaled_dpi(observed.metadata, job.height / observed.height))
    return Restoration(picture=picture, fit=result, preset=job.preset, metrics=metrics, mask=job.mask)


def archive_mask(observed: Picture, options: Options, mask: Picture | None) -> Picture:
    """The mask an archive fit uses (white = kept): the dust and scratches found
    (``pipeline.core.defects``) at ``options.defect_sensitivity``, combined with ``mask`` (a pixel
    black in either is filled) or, with ``options.mask_mode`` "replace", ``mask`` alone."""
    if mask is not None and options.mask_mode == "replace":
        return mask
    keep = torch.from_numpy(detect_defects(observed.pixels, sensitivity=options.defect_sensitivity).keep)
    pixels = keep.float()[None, None]  # (1, 1, H, W)
    if mask is not None:
        pixels = pixels * (mask.pixels.mean(dim=1, keepdim=True) > 0.5).float()
    return Picture(pixels=pixels, alpha=None, bit_depth=8)


def build_operator(options: Options, observed: Picture, mask: Picture | None) -> Operator:
    """The forward operator A of the task, for inputs that passed ``check_inputs``."""
    task, c, h, w = options.task, observed.channels, observed.height, observed.width
    if task == "denoise":
        return Denoise()
    if task == "jpeg":
        return JpegArtifacts()
    if task == "flash":
        return Operator()
    if task == "sr":
        return SuperResolution(options.scale, channels=c)
    if task in ("inpaint", "archive"):
        return Inpainting(mask.pixels.mean(dim=1, keepdim=True))
    if task == "invert":
        if c != 3:
            raise ValueError(f"feature inversion needs an RGB image, got {c} channel(s)")
        return FeatureInversion(feature_extractor(options.arch, options.layer, options.weights), h, w)
    raise ValueError(f"unknown task {task!r}")


def resolve_device(device: str) -> str:
    """'auto' = CUDA when available, else the CPU; anything else is checked by torch."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"bad device {device!r}: {error}") from None
    return device



# -----------------------------------------------------------------------------
# helpers


def check_reference(reference: Picture | None, channels: int, height: int, width: int) -> Tensor | None:
    """The reference's pixels [1, channels, height, width], its channels matched to the image's."""
    if reference is None:
        return None
    if (reference.height, reference.width) != (height, width):
        raise ValueError(
            f"reference is {reference.width}x{reference.height} but the restored image is {width}x{height}"
        )
    pixels = reference.pixels
    if pixels.shape[1] != channels:
        pixels = pixels.mean(dim=1, keepdim=True) if channels == 1 else pixels.expand(-1, channels, -1, -1)
    return pixels


def noise_sigma_of(picture: Picture) -> float | None:
    """σ̂ of the picture, 0-255 units (the mean of its channels'); None for an image too small to
    tell noise from content. One channel at a time: ``estimate_noise`` works on a float64 copy of
    what it is given (on a 12 MP RGB scan +529 MiB at its peak this way, +777 MiB all at once)."""
    if min(picture.height, picture.width) < 8:
        return None
    return float(np.mean([estimate_noise(picture.pixels[:, c:c + 1]).sigma for c in range(picture.channels)]))


def masked_fraction(mask: Picture) -> float:
    """The share of pixels a mask (white = kept) leaves to fill."""
    return float((mask.pixels.mean(dim=1) <= 0.5).float().mean())


def _guide_input(guide: Picture, height: int, width: int, grid: tuple[int, int]) -> Tensor:
    """The flash image [1, 3, height, width] (checked by ``check_inputs``) as the network input,
    replicate-padded (centred) to the grid."""
    top, left = (grid[0] - height) // 2, (grid[1] - width) // 2
    pad = (left, grid[1] - width - left, top, grid[0] - height - top)
    return F.pad(guide.pixels, pad, mode="replicate")

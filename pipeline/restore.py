"""One image, one task: choose the operator, network and input, fit, and score.

This is what ``dip restore`` and the batch job call. It takes decoded pictures
(``pipeline.images.Picture``) and returns one; reading and writing them is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from .baselines import degraded_input, tv_restore
from .features import feature_extractor
from .fit import FitResult, fit
from .images import Picture, to_uint8
from .metrics import psnr, psnr_y, ssim
from .nets import build_net, grid_size, make_input
from .operators import (
    Denoise,
    FeatureInversion,
    Inpainting,
    JpegArtifacts,
    Operator,
    SuperResolution,
)
from .presets import TASKS, Preset, get_preset
from .tiling import TILE_OVERLAP_DIVISOR, choose_tile, restore_tiled


@dataclass(frozen=True)
class Options:
    """The fit options of ``dip restore``; a manifest row's ``params`` use the same names."""

    task: str = "denoise"
    preset: str | None = None  # None = the task's paper preset
    iterations: int | None = None  # None = the preset's
    early_stop: bool | None = None  # None = the preset's (off in every paper preset)
    seed: int = 0
    device: str = "cpu"
    scale: int | None = None  # super-resolution factor
    arch: str = "alexnet"  # feature inversion: network and layer
    layer: str = "conv5"
    weights: str | None = None  # feature inversion: state-dict file (None = torchvision's cache)
    tv_baseline: bool = False  # also minimise the TV prior with the same data term, and score it
    time_limit_s: float | None = None  # stop the fit with FitTimeout after this many seconds
    tiling: bool = True  # fit an image beyond the memory budget in overlapping tiles (off: FitTooLarge)
    memory_budget_gb: float | None = None  # None = the device's free memory (CUDA) or available RAM (CPU)

    def __post_init__(self):
        for name, kinds in (("iterations", (int, type(None))), ("early_stop", (bool, type(None))),
                            ("seed", (int,)), ("scale", (int, type(None))), ("device", (str,)),
                            ("preset", (str, type(None))), ("layer", (str,)), ("arch", (str,)),
                            ("tv_baseline", (bool,)), ("time_limit_s", (int, float, type(None))),
                            ("tiling", (bool,)), ("memory_budget_gb", (int, float, type(None)))):
            value = getattr(self, name)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ValueError(f"option {name} has a bad value {value!r}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")
        get_preset(self.task, self.preset, scale=self.scale)  # raises on an unknown preset

    @classmethod
    def from_dict(cls, values: dict) -> "Options":
        """Options from a dict of option names; unknown names raise ValueError naming them."""
        unknown = sorted(set(values) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(OPTION_NAMES))}")
        return cls(**values)

    def resolve(self) -> Preset:
        return _resolve(self.task, self.preset, self.scale, self.iterations, self.early_stop)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in OPTION_NAMES}


OPTION_NAMES = tuple(f.name for f in fields(Options))


@lru_cache(maxsize=1024)
def _resolve(task: str, preset: str | None, scale: int | None, iterations: int | None,
             early_stop: bool | None) -> Preset:
    return get_preset(task, preset, scale=scale).with_overrides(iterations=iterations, early_stop=early_stop)


@dataclass
class Restoration:
    picture: Picture  # the restored image, alpha carried through, at the input's bit depth
    fit: FitResult
    preset: Preset
    metrics: dict  # psnr, ssim, psnr_y (sr), psnr_input: dB / [0, 1]; None without a reference

    def summary(self) -> dict:
        """Metrics and timings as plain JSON-able values."""
        return {
            "task": self.preset.task,
            "preset": self.preset.name,
            **self.metrics,
            "iterations": self.fit.iterations,
            "best_iteration": self.fit.best_iteration,
            "stopped_early": self.fit.stopped_early,
            "backtracks": self.fit.backtracks,
            "seconds": round(self.fit.seconds, 3),
            "iterations_per_second": round(self.fit.iterations_per_second, 2),
            "width": self.picture.width,
            "height": self.picture.height,
        }


def restore(
    observed: Picture,
    options: Options,
    *,
    mask: Picture | None = None,
    reference: Picture | None = None,
    guide: Picture | None = None,
) -> Restoration:
    """Restore ``observed`` with DIP. ``mask`` (inpaint, white = known), ``guide`` (flash: the
    flash image) and ``reference`` (the clean image, only for scoring) as the task needs.

    A fit whose memory estimate (``pipeline.memory``) exceeds the budget runs in overlapping
    tiles blended without seams (``pipeline.tiling``), the largest tile that fits; with
    ``options.tiling`` off it raises ``FitTooLarge`` before anything is allocated.
    """
    tile = choose_tile(observed, options)
    if tile is not None:
        return restore_tiled(observed, options, mask=mask, reference=reference, guide=guide, tile=tile,
                             overlap=max(1, tile // TILE_OVERLAP_DIVISOR), restore_one=restore)
    job = prepare(observed, options, mask=mask, reference=reference, guide=guide)
    # 3. Fit.
    result = fit(job.net, job.z, job.operator, job.y, job.preset.fit, reference=job.reference, seed=options.seed,
                 device=options.device, time_limit_s=options.time_limit_s)
    return finish(job, result)


@dataclass
class Prepared:
    """Everything one fit needs, on the CPU: what ``restore`` fits and ``pipeline.packing`` stacks."""

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


def prepare(observed: Picture, options: Options, *, mask: Picture | None = None, reference: Picture | None = None,
            guide: Picture | None = None) -> Prepared:
    """Steps 1-2 of ``restore``: the operator, the observation, the seeded input and network."""
    preset = options.resolve()
    y = observed.pixels  # [1, C, h, w] in [0, 1]

    # 1. The forward operator, and the observation in its space.
    operator = build_operator(options, observed, mask)
    height, width = operator.image_size(*y.shape[-2:])
    if isinstance(operator, FeatureInversion):
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
    ref = _check_reference(reference, observed.channels, height, width)
    return Prepared(observed, options, preset, operator, y, z, net, ref, height, width)


def finish(job: Prepared, result: FitResult) -> Restoration:
    """Step 4 of ``restore``: score against the reference, carry alpha through."""
    options, observed, ref, y = job.options, job.observed, job.reference, job.y
    baselines = {}
    if ref is not None and options.task in ("denoise", "sr", "inpaint", "jpeg"):
        baselines["baseline"] = degraded_input(job.operator, y.cpu())
        if options.tv_baseline:
            baselines["tv"] = tv_restore(job.operator.cpu().float(), y.cpu().float())
    metrics = score(options.task, result.image, ref, observed.pixels, baselines)
    alpha = observed.alpha
    if alpha is not None and alpha.shape[-2:] != (job.height, job.width):
        alpha = F.interpolate(alpha, size=(job.height, job.width), mode="bicubic", align_corners=False).clamp(0, 1)
    picture = Picture(pixels=result.image, alpha=alpha, bit_depth=observed.bit_depth)
    return Restoration(picture=picture, fit=result, preset=job.preset, metrics=metrics)


def build_operator(options: Options, observed: Picture, mask: Picture | None) -> Operator:
    task, c, h, w = options.task, observed.channels, observed.height, observed.width
    if task == "denoise":
        return Denoise()
    if task == "jpeg":
        return JpegArtifacts()
    if task == "flash":
        return Operator()
    if task == "sr":
        if options.scale is None:
            raise ValueError("task 'sr' needs a scale (2, 4, 8)")
        return SuperResolution(options.scale, channels=c)
    if task == "inpaint":
        if mask is None:
            raise ValueError("task 'inpaint' needs a mask (white = known pixel)")
        if (mask.height, mask.width) != (h, w):
            raise ValueError(f"mask is {mask.width}x{mask.height} but the image is {w}x{h}")
        return Inpainting(mask.pixels.mean(dim=1, keepdim=True))
    if task == "invert":
        if c != 3:
            raise ValueError(f"feature inversion needs an RGB image, got {c} channel(s)")
        return FeatureInversion(feature_extractor(options.arch, options.layer, options.weights), h, w)
    raise ValueError(f"unknown task {task!r}")


def score(task: str, restored: Tensor, reference: Tensor | None, observed: Tensor | None = None,
          baselines: dict[str, Tensor] | None = None) -> dict:
    """Metrics against the reference, all None without one (dB; SSIM in [0, 1]):

    psnr, ssim: RGB in [0, 1]; psnr_y: the paper's super-resolution protocol (Y channel, 4-pixel
    shave); psnr_input: the observed input where it has the image's size; psnr_<name> and
    psnr_y_<name> (super-resolution) for each baseline image given (``baseline``: bicubic for
    super-resolution, the input otherwise; ``tv``: the TV prior).
    """
    names = ["psnr", "ssim", "psnr_y", "psnr_input", "psnr_baseline", "psnr_y_baseline", "psnr_tv", "psnr_y_tv"]
    metrics = dict.fromkeys(names)
    if reference is None:
        return metrics
    y_protocol = task == "sr" and restored.shape[1] == 3
    metrics["psnr"] = psnr(restored, reference)
    metrics["ssim"] = ssim(restored, reference)
    if y_protocol:
        metrics["psnr_y"] = psnr_y(to_uint8(restored), to_uint8(reference))
    if observed is not None and observed.shape == reference.shape:
        metrics["psnr_input"] = psnr(observed, reference)
    for name, image in (baselines or {}).items():
        metrics[f"psnr_{name}"] = psnr(image, reference)
        if y_protocol:
            metrics[f"psnr_y_{name}"] = psnr_y(to_uint8(image), to_uint8(reference))
    return metrics


def resolve_device(device: str) -> str:
    """'auto' = CUDA when available, else the CPU; anything else is checked by torch."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"bad device {device!r}: {error}") from None
    return device


def _check_reference(reference: Picture | None, channels: int, height: int, width: int) -> Tensor | None:
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


def _guide_input(guide: Picture | None, height: int, width: int, grid: tuple[int, int]) -> Tensor:
    """The flash image as the network input, replicate-padded (centred) to the grid."""
    if guide is None:
        raise ValueError("task 'flash' needs the flash image as guide")
    if (guide.height, guide.width) != (height, width):
        raise ValueError(f"guide is {guide.width}x{guide.height} but the image is {width}x{height}")
    top, left = (grid[0] - height) // 2, (grid[1] - width) // 2
    pad = (left, grid[1] - width - left, top, grid[0] - height - top)
    return F.pad(guide.pixels, pad, mode="replicate")

"""One image, one task: check the inputs, tile or not, choose the operator, network and input,
fit, and score. N same-size images in one packed fit: ``pipeline.core.packed.restore_many``.

This is what ``dip restore`` and the batch job call. It takes decoded pictures
(``pipeline.core.images.Picture``) and returns one; reading and writing them is the caller's job.

    restore(observed, options)   check_inputs -> [archive_mask] -> choose_tile
                                 -> (restore_tiled | prepare -> fit -> finish)
    restore_many([{observed, options}, ...])   (pipeline.core.packed) prepare each -> fit_many -> finish each
    restore with options.restarts > 1           restore_averaged: N seeded restores, averaged
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from .baselines import degraded_input, tv_restore
from .defects import detect_defects
from .features import feature_extractor
from .fit import FitResult, FitTimeout, Progress, fit
from .images import Picture, resize_alpha
from .memory import choose_tile
from .metadata import scaled_dpi
from .metrics import score
from .nets import build_net, grid_size, make_input
from .noise import estimate_noise
from .operators import Denoise, FeatureInversion, Inpainting, JpegArtifacts, Operator, SuperResolution
from .options import Options
from .presets import Preset
from .tiles import TILE_OVERLAP_DIVISOR, blend_weights, tile_boxes
from .warm import Start, collection_start, load_weights, serpentine, weights_of


@dataclass
class Restoration:
    """What ``restore`` returns: the restored picture, the fit, the resolved preset and the scores."""

    picture: Picture  # the restored image, alpha carried through, at the input's bit depth
    fit: FitResult
    preset: Preset
    metrics: dict  # psnr, ssim, psnr_y (sr), psnr_input: dB / [0, 1]; None without a reference
    mask: Picture | None = None  # archive: the mask the fit used (white = kept, black = filled)
    restart_psnr: list | None = None  # restarts: each fit's PSNR, dB (None entries without a reference)
    weights: dict | None = None  # the fitted network's weights (``restore(keep_weights=True)``; warm starts)

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
            "warm_start": self.metrics.get("warm_start", "none"),
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
    progress: Progress | None = None,
    start: Start | None = None,
    keep_weights: bool = False,
) -> Restoration:
    """Restore ``observed`` with DIP. ``mask`` (inpaint, white = known), ``guide`` (flash: the
    flash image) and ``reference`` (the clean image, only for scoring) as the task needs.
    ``progress(done, total, entry)`` is called after every iteration (``pipeline.core.fit``), its
    counts over all the fits of the image (tiles, restarts).

    Warm starts (``pipeline.core.warm``, ``options.warm_start``): ``start`` gives the weights a
    one-piece fit starts from (collection: read from ``options.warm_weights`` when not given);
    "neighbour" chains the tiles of a tiled fit.
    ``keep_weights``: the Restoration carries the fitted network's weights.

    A fit whose memory estimate (``pipeline.core.memory``) exceeds the budget runs in overlapping
    tiles blended without seams (``restore_tiled``), the largest tile that fits; with
    ``options.tiling`` off it raises ``FitTooLarge`` before anything is allocated.
    """
    check_inputs(observed, options, mask=mask, guide=guide)
    if options.restarts > 1:
        return restore_averaged(observed, options, mask=mask, reference=reference, guide=guide, progress=progress)
    if options.task == "archive":  # found once on the whole image; each tile gets its part
        mask, options = archive_mask(observed, options, mask), replace(options, mask_mode="replace")
    tile = choose_tile(observed, options)
    if tile is not None:
        tiled = restore_tiled(observed, options, mask=mask, reference=reference, guide=guide, tile=tile,
                              overlap=max(1, tile // TILE_OVERLAP_DIVISOR), progress=progress)
        if options.task == "archive":
            tiled.mask, tiled.metrics["defect_fraction"] = mask, _masked_fraction(mask)
        return tiled
    if start is None and options.warm_start == "collection":
        start = collection_start(options, observed.channels)
    job = prepare(observed, options, mask=mask, reference=reference, guide=guide, start=start)
    # 3. Fit.
    result = fit(job.net, job.z, job.operator, job.y, job.preset.fit, reference=job.reference, seed=options.seed,
                 device=options.device, time_limit_s=options.time_limit_s, noise_sigma=job.noise_floor,
                 progress=progress)
    restored = finish(job, result)
    if keep_weights:
        restored.weights = weights_of(job.net)
    return restored


def _part(progress: Progress | None, k: int, n: int) -> dict:
    """``restore_one``'s progress keyword for fit k of n (counts over all n), none without one."""
    if progress is None:
        return {}
    return {"progress": lambda i, total, entry: progress(k * total + i, n * total, entry)}


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
    warm: bool = False  # the network started from given weights (a warm start), not its seed


def prepare(observed: Picture, options: Options, *, mask: Picture | None = None, reference: Picture | None = None,
            guide: Picture | None = None, start: Start | None = None) -> Prepared:
    """Steps 1-3 of ``restore``: the operator, the observation, the seeded input and network (or
    the weights ``start`` gives, and the input of its seed), the noise level."""
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
        input_seed = options.seed if start is None or start.input_seed is None else start.input_seed
        generator = torch.Generator().manual_seed(input_seed)
        z = make_input(preset.input_kind, preset.input_channels, *grid, generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        net = build_net(replace(preset.net, in_channels=z.shape[1], out_channels=observed.channels))
    if start is not None:
        load_weights(net, start.weights)
    ref = _check_reference(reference, observed.channels, height, width)

    # 3. The noise level, estimated from the observation (no ground truth needed).
    noise_sigma = _noise_sigma(observed) if operator.observes_image else None
    floor = math.nan if noise_sigma is None else operator.noise_floor(noise_sigma / 255)  # NaN: unknown
    return Prepared(observed, options, preset, operator, y, z, net, ref, height, width, noise_sigma, floor,
                    mask if options.task == "archive" else None, warm=start is not None)


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
               "noise_sigma": job.noise_sigma, "warm_start": options.warm_start if job.warm else "none"}
    if job.mask is not None:
        metrics["defect_fraction"] = _masked_fraction(job.mask)
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
# tiles: an image beyond the memory budget


def restore_tiled(
    observed: Picture,
    options: Options,
    *,
    mask: Picture | None = None,
    reference: Picture | None = None,
    guide: Picture | None = None,
    tile: int,
    overlap: int,
    restore_one: Callable[..., Restoration] | None = None,
    progress: Progress | None = None,
) -> Restoration:
    """Restore ``observed`` tile by tile (``pipeline.core.tiles``) and blend the tiles into one image.

    tile, overlap: in px of the observation. The observation, ``mask`` and ``guide`` are cut the
    same way; the restored image is ``scale`` times larger for super-resolution, and so are its
    tiles and their overlap. Tile k is fitted with seed options.seed + k and no reference (with the
    "neighbour" warm start in serpentine order, from the weights of the tile fitted before it);
    ``reference`` (clean, image-sized) scores the blended image once. options.time_limit_s bounds
    all tiles together. The FitResult sums seconds and backtracks, takes the largest iteration
    counts, is stopped_early when every tile was, and has no history; metrics["tiles"] = the count.
    restore_one: what fits one tile, with ``restore``'s signature (default: ``restore``).
    """
    restore_one = restore if restore_one is None else restore_one
    # 1. The tiles, in observation space, and the image space they restore into.
    if options.task == "invert":
        raise ValueError("task 'invert' cannot be tiled: the features are of the whole image")
    check_inputs(observed, options, mask=mask, guide=guide)
    s = options.scale if options.task == "sr" else 1
    height, width = observed.height * s, observed.width * s
    ref = _check_reference(reference, observed.channels, height, width)
    boxes = tile_boxes(observed.height, observed.width, tile, overlap)

    # 2. Restore each tile, accumulating tile * weight and weight in image space. With the
    #    neighbour warm start the tiles go in serpentine order, each from the last one's weights
    #    and the first one's input.
    total = torch.zeros(1, observed.channels, height, width)  # (1, C, H, W)
    weight_sum = torch.zeros(1, 1, height, width)  # (1, 1, H, W)
    started, results = time.perf_counter(), []
    chained = options.warm_start == "neighbour"
    order = serpentine(boxes) if chained else range(len(boxes))
    start: Start | None = None
    for done, k in enumerate(order):
        top, left, h, w = boxes[k]
        tile_options = replace(options, seed=options.seed + k)
        if options.time_limit_s is not None:
            left_s = options.time_limit_s - (time.perf_counter() - started)
            if left_s <= 0:
                raise FitTimeout(f"the tiled fit ran past its time limit of {options.time_limit_s:g} s "
                                 f"after {done} of {len(boxes)} tiles")
            tile_options = replace(tile_options, time_limit_s=left_s)
        warm = {"start": start, "keep_weights": True} if chained else {}
        result = restore_one(_crop(observed, top, left, h, w), tile_options, mask=_crop(mask, top, left, h, w),
                             reference=None, guide=_crop(guide, top, left, h, w), **warm,
                             **_part(progress, done, len(boxes)))
        if chained:
            start = Start(result.weights, input_seed=options.seed + order[0])
        box = (top * s, left * s, h * s, w * s)
        pixels = result.picture.pixels
        if tuple(pixels.shape) != (1, observed.channels, h * s, w * s):
            raise ValueError(f"a tile came back {list(pixels.shape)} for the box {box} in image space")
        weight = blend_weights(box, height, width, overlap * s)  # (1, 1, h*s, w*s)
        total[..., box[0]:box[0] + box[2], box[1]:box[1] + box[3]] += pixels * weight
        weight_sum[..., box[0]:box[0] + box[2], box[1]:box[1] + box[3]] += weight
        results.append(result)
    image = total / weight_sum  # (1, C, H, W), in [0, 1]: a convex combination of the tiles

    # 3. Score the whole image once, carry alpha through, and sum up the fits.
    metrics = score(options.task, image, ref, observed.pixels, baselines={})
    metrics["noise_sigma"] = _noise_sigma(observed)
    metrics["tiles"] = len(boxes)
    metrics["warm_start"] = options.warm_start if chained and len(boxes) > 1 else "none"
    picture = Picture(pixels=image, alpha=resize_alpha(observed.alpha, height, width), bit_depth=observed.bit_depth,
                      metadata=scaled_dpi(observed.metadata, s))
    return Restoration(picture=picture, fit=_summed([r.fit for r in results], image), preset=results[0].preset,
                       metrics=metrics)


def _summed(fits: list[FitResult], image: Tensor) -> FitResult:
    """One FitResult for several fits making ``image`` (tiles, restarts): seconds and backtracks
    summed, the largest iteration counts, stopped early when every fit was, no history."""
    return FitResult(
        image=image,
        best_iteration=max(f.best_iteration for f in fits),
        iterations=max(f.iterations for f in fits),
        stopped_early=all(f.stopped_early for f in fits),
        backtracks=sum(f.backtracks for f in fits),
        seconds=sum(f.seconds for f in fits),
        history=[],
    )


# -----------------------------------------------------------------------------
# restarts: N seeded fits of one image, averaged


def restore_averaged(
    observed: Picture,
    options: Options,
    *,
    mask: Picture | None = None,
    reference: Picture | None = None,
    guide: Picture | None = None,
    progress: Progress | None = None,
) -> Restoration:
    """``options.restarts`` fits of ``observed`` with seeds options.seed, options.seed + 1, ...
    (each as ``restore`` does it: tiled where it must be), their outputs averaged pixel by pixel.

    The metrics are the first fit's with psnr, ssim and psnr_y of the average, and metrics["restarts"]
    = N; ``restart_psnr`` holds each fit's PSNR. The FitResult sums the fits' seconds (``_summed``);
    options.time_limit_s bounds each fit.
    """
    runs = [restore(observed, replace(options, restarts=1, seed=options.seed + k), mask=mask,
                    reference=reference, guide=guide, **_part(progress, k, options.restarts))
            for k in range(options.restarts)]
    image = torch.stack([run.fit.image for run in runs]).mean(0)  # [1, C, H, W], in [0, 1]
    first = runs[0]
    metrics = dict(first.metrics)
    if reference is not None:
        ref = _check_reference(reference, observed.channels, *image.shape[-2:])
        fresh = score(options.task, image, ref)
        metrics.update({k: fresh[k] for k in ("psnr", "ssim", "psnr_y")})
    metrics["restarts"] = len(runs)
    return Restoration(picture=replace(first.picture, pixels=image), fit=_summed([run.fit for run in runs], image),
                       preset=first.preset, metrics=metrics, mask=first.mask,
                       restart_psnr=[run.metrics["psnr"] for run in runs])


def _crop(picture: Picture | None, top: int, left: int, h: int, w: int) -> Picture | None:
    """The box of ``picture``, without alpha (the whole image's alpha is carried through once)."""
    if picture is None:
        return None
    pixels = picture.pixels[..., top:top + h, left:left + w].contiguous()  # (1, C, h, w)
    return Picture(pixels=pixels, alpha=None, bit_depth=picture.bit_depth)


# -----------------------------------------------------------------------------
# helpers


def _check_reference(reference: Picture | None, channels: int, height: int, width: int) -> Tensor | None:
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


def _noise_sigma(picture: Picture) -> float | None:
    """σ̂ of the picture, 0-255 units; None for an image too small to tell noise from content."""
    return estimate_noise(picture.pixels).sigma if min(picture.height, picture.width) >= 8 else None


def _masked_fraction(mask: Picture) -> float:
    """The share of pixels a mask (white = kept) leaves to fill."""
    return float((mask.pixels.mean(dim=1) <= 0.5).float().mean())


def _guide_input(guide: Picture, height: int, width: int, grid: tuple[int, int]) -> Tensor:
    """The flash image [1, 3, height, width] (checked by ``check_inputs``) as the network input,
    replicate-padded (centred) to the grid."""
    top, left = (grid[0] - height) // 2, (grid[1] - width) // 2
    pad = (left, grid[1] - width - left, top, grid[0] - height - top)
    return F.pad(guide.pixels, pad, mode="replicate")

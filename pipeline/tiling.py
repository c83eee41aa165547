"""Restore an image too large for the device in overlapping tiles, blended without seams.

``tile_boxes`` cuts the observation into evenly spread tiles that overlap their neighbours,
each tile is restored on its own (a fit of its own, seeded apart), and ``restore_tiled``
blends the restored tiles back: a raised-cosine ramp (``blend_weights``) across the overlap,
normalised by the sum of the weights, so that every pixel is a convex combination of the tiles
covering it. ``largest_tile`` finds the largest tile that fits a memory budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .engine import EngineConfig
from .fit import FitResult, FitTimeout
from .images import Picture
from .memory import GiB, available_bytes, check_fits, estimate_fit_bytes

if TYPE_CHECKING:  # restore imports this module
    from .restore import Options, Restoration

Box = tuple[int, int, int, int]  # (top, left, height, width), in px


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[Box]:
    """Boxes (top, left, h, w) covering a height x width image, row by row.

    Each box is at most tile x tile; neighbours overlap by at least ``overlap`` px; the boxes are
    spread evenly and the last one in a row or column is flush with the border. An image not
    larger than the tile is one box.
    """
    for name, value in (("height", height), ("width", width), ("tile", tile)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"tile_boxes: {name} must be a positive int, got {value!r}")
    if not isinstance(overlap, int) or not tile > overlap >= 0:
        raise ValueError(f"tile_boxes: need tile > overlap >= 0, got tile={tile!r} overlap={overlap!r}")
    rows, cols = _spans(height, tile, overlap), _spans(width, tile, overlap)
    return [(top, left, h, w) for top, h in rows for left, w in cols]


def _spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, length) along one axis: n tiles of `tile` px with starts rounded from an even spacing."""
    if size <= tile:
        return [(0, size)]
    n = math.ceil((size - overlap) / (tile - overlap))  # spacing (size - tile) / (n - 1) <= tile - overlap
    return [((i * (size - tile) + (n - 1) // 2) // (n - 1), tile) for i in range(n)]


def blend_weights(box: Box, height: int, width: int, overlap: int) -> Tensor:
    """Weights [1, 1, h, w] for the tile at ``box`` in a height x width image, in (0, 1].

    On a side that borders another tile they rise as a raised cosine across ``overlap`` px from
    near 0 at the tile's edge to 1; on a side at the image border they are 1. Never 0, so the sum
    of the weights over the tiles can divide.
    """
    top, left, h, w = box
    if not (0 <= top and top + h <= height and 0 <= left and left + w <= width and h >= 1 and w >= 1):
        raise ValueError(f"blend_weights: box {box} is not inside a {height}x{width} image")
    if not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"blend_weights: overlap must be an int >= 0, got {overlap!r}")
    rows = _ramp(h, overlap, top > 0, top + h < height)  # (h,)
    cols = _ramp(w, overlap, left > 0, left + w < width)  # (w,)
    return (rows[:, None] * cols[None, :])[None, None]  # (1, 1, h, w)


def _ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> Tensor:
    """(length,) weights: 1, and sin²(π (d + ½) / 2·overlap) within overlap px of a ramped end
    (d px from it). Two tiles overlapping by exactly overlap px get weights summing to 1."""
    weights = torch.ones(length, dtype=torch.float64)
    d = torch.arange(length, dtype=torch.float64)  # distance from the start
    for ramped, distance in ((ramp_start, d), (ramp_end, length - 1 - d)):
        if ramped and overlap > 0:
            rise = torch.sin(math.pi * (distance + 0.5) / (2 * overlap)).square()
            weights = torch.minimum(weights, torch.where(distance < overlap, rise, 1.0))
    return weights.float()


def largest_tile(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest side s in [lo, hi] with fits(s), by binary search (fits must be monotone:
    true up to some side, false above). ValueError when not even lo fits."""
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise ValueError(f"largest_tile: need 1 <= lo <= hi, got lo={lo!r} hi={hi!r}")
    if not fits(lo):
        raise ValueError(f"largest_tile: not even a {lo} px tile fits")
    while lo < hi:  # fits(lo) holds
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def restore_tiled(
    observed: Picture,
    options: Options,
    *,
    mask: Picture | None = None,
    reference: Picture | None = None,
    guide: Picture | None = None,
    tile: int,
    overlap: int,
    restore_one: Callable[..., Restoration],
) -> Restoration:
    """Restore ``observed`` tile by tile with ``restore_one`` (``pipeline.restore.restore``'s
    signature) and blend the tiles into one image.

    tile, overlap: in px of the observation. The observation, ``mask`` and ``guide`` are cut the
    same way; the restored image is ``scale`` times larger for super-resolution, and so are its
    tiles and their overlap. Tile k is fitted with seed options.seed + k and no reference;
    ``reference`` (clean, image-sized) scores the blended image once. options.time_limit_s bounds
    all tiles together. The FitResult sums seconds and backtracks, takes the largest iteration
    counts, is stopped_early when every tile was, and has no history; metrics["tiles"] = the count.
    """
    from .restore import Restoration, _check_reference, score

    # 1. The tiles, in observation space, and the image space they restore into.
    if options.task == "invert":
        raise ValueError("task 'invert' cannot be tiled: the features are of the whole image")
    if options.task == "sr" and options.scale is None:
        raise ValueError("task 'sr' needs a scale (2, 4, 8)")
    s = options.scale if options.task == "sr" else 1
    height, width = observed.height * s, observed.width * s
    for name, picture in (("mask", mask), ("guide", guide)):
        if picture is not None and (picture.height, picture.width) != (observed.height, observed.width):
            raise ValueError(f"{name} is {picture.width}x{picture.height} but the image is "
                             f"{observed.width}x{observed.height}")
    ref = _check_reference(reference, observed.channels, height, width)
    boxes = tile_boxes(observed.height, observed.width, tile, overlap)

    # 2. Restore each tile, accumulating tile * weight and weight in image space.
    total = torch.zeros(1, observed.channels, height, width)  # (1, C, H, W)
    weight_sum = torch.zeros(1, 1, height, width)  # (1, 1, H, W)
    started, results = time.perf_counter(), []
    for k, (top, left, h, w) in enumerate(boxes):
        tile_options = replace(options, seed=options.seed + k)
        if options.time_limit_s is not None:
            left_s = options.time_limit_s - (time.perf_counter() - started)
            if left_s <= 0:
                raise FitTimeout(f"the tiled fit ran past its time limit of {options.time_limit_s:g} s "
                                 f"after {k} of {len(boxes)} tiles")
            tile_options = replace(tile_options, time_limit_s=left_s)
        result = restore_one(_crop(observed, top, left, h, w), tile_options, mask=_crop(mask, top, left, h, w),
                             reference=None, guide=_crop(guide, top, left, h, w))
        box = (top * s, left * s, h * s, w * s)
        pixels = result.picture.pixels
        if tuple(pixels.shape) != (1, observed.channels, h * s, w * s):
            raise ValueError(f"restore_one returned a {list(pixels.shape)} tile for the box {box} in image space")
        weight = blend_weights(box, height, width, overlap * s)  # (1, 1, h*s, w*s)
        total[..., box[0]:box[0] + box[2], box[1]:box[1] + box[3]] += pixels * weight
        weight_sum[..., box[0]:box[0] + box[2], box[1]:box[1] + box[3]] += weight
        results.append(result)
    image = total / weight_sum  # (1, C, H, W), in [0, 1]: a convex combination of the tiles

    # 3. Score the whole image once, carry alpha through, and sum up the fits.
    metrics = score(options.task, image, ref, observed.pixels, baselines={})
    metrics["tiles"] = len(boxes)
    alpha = observed.alpha
    if alpha is not None and alpha.shape[-2:] != (height, width):
        alpha = F.interpolate(alpha, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    fits = [r.fit for r in results]
    summed = FitResult(
        image=image,
        best_iteration=max(f.best_iteration for f in fits),
        iterations=max(f.iterations for f in fits),
        stopped_early=all(f.stopped_early for f in fits),
        backtracks=sum(f.backtracks for f in fits),
        seconds=sum(f.seconds for f in fits),
        history=[],
    )
    picture = Picture(pixels=image, alpha=alpha, bit_depth=observed.bit_depth)
    return Restoration(picture=picture, fit=summed, preset=results[0].preset, metrics=metrics)


def _crop(picture: Picture | None, top: int, left: int, h: int, w: int) -> Picture | None:
    """The box of ``picture``, without alpha (the whole image's alpha is carried through once)."""
    if picture is None:
        return None
    pixels = picture.pixels[..., top:top + h, left:left + w].contiguous()  # (1, C, h, w)
    return Picture(pixels=pixels, alpha=None, bit_depth=picture.bit_depth)


TILE_OVERLAP_DIVISOR = 8  # tiles overlap by 1/8 of their side


def choose_tile(observed: Picture, options: Options) -> int | None:
    """None when the whole image fits the memory budget; else the tile side (observation px) to
    use, the largest whose fit fits. Raises FitTooLarge when tiling is off or cannot help."""
    budget = memory_budget(options)
    needed = memory_needed(observed, options)
    if needed <= budget:
        return None
    preset = options.resolve()
    what = f"{observed.width}x{observed.height} image ({options.task}, preset {preset.name})"
    if not options.tiling or options.task in ("invert", "flash"):
        check_fits(needed, budget, what)
    smallest = 2 ** preset.net.depth * 2
    if memory_needed(observed, options, smallest, smallest) > budget:
        check_fits(memory_needed(observed, options, smallest, smallest), budget,
                   f"even a {smallest}x{smallest} tile of the {what}")
    return largest_tile(lambda side: memory_needed(observed, options, side, side) <= budget, smallest,
                        max(observed.height, observed.width))


def memory_needed(observed: Picture, options: Options, height: int | None = None, width: int | None = None) -> int:
    """Estimated peak bytes of the fit of ``observed`` (or of a height x width piece of it)."""
    preset = options.resolve()
    scale = options.scale if options.task == "sr" and options.scale else 1
    h, w = height or observed.height, width or observed.width
    return estimate_fit_bytes(preset.net, h * scale, w * scale, in_channels=preset.input_channels,
                              out_channels=observed.channels, bf16=EngineConfig.fast(options.device).autocast_bf16,
                              early_stop_window=preset.fit.early_stop.window if preset.fit.early_stop else None,
                              backtrack=preset.fit.backtrack)


def memory_budget(options: Options) -> int:
    """Bytes a fit may use: ``memory_budget_gb``, else what the device has free now."""
    return int(options.memory_budget_gb * GiB) if options.memory_budget_gb else available_bytes(options.device)

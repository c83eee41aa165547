"""One image, one task: check the inputs, tile or not, choose the operator, network and input,
fit, and score. N same-size images in one packed fit: ``pipeline.core.packed.restore_many``.

This is what ``dip restore`` and the batch job call. It takes decoded pictures
(``pipeline.core.images.Picture``) and returns one; reading and writing them is the caller's job.
Making one fit ready and scoring it (``prepare``, ``finish``) is ``pipeline.core.prepare``.

    restore(observed, options)   check_inputs -> choose_tile (the budget, read once) -> [archive_mask]
                                 -> restore_averaged | restore_tiled | _restore_whole
    restore_tiled                each tile: _restore_whole (a tile is never tiled again), blended
    _restore_whole               prepare -> fit -> finish
    restore_many([{observed, options}, ...])   (pipeline.core.packed) prepare each -> fit_many -> finish each
    restore with options.restarts > 1           restore_averaged: N seeded restores, averaged
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from .fit import FitResult, FitTimeout, Progress, fit
from .images import Picture, resize_alpha
from .memory import choose_tile
from .metadata import scaled_dpi
from .metrics import score
from .options import Options
from .prepare import (
    Restoration,
    archive_mask,
    check_inputs,
    check_reference,
    finish,
    masked_fraction,
    noise_sigma_of,
    prepare,
)
from .tiles import TILE_OVERLAP_DIVISOR, blend_weights, tile_boxes


def restore(
    observed: Picture,
    options: Options,
    *,
    mask: Picture | None = None,
    reference: Picture | None = None,
    guide: Picture | None = None,
    progress: Progress | None = None,
) -> Restoration:
    """Restore ``observed`` with DIP. ``mask`` (inpaint, white = known), ``guide`` (flash: the
    flash image) and ``reference`` (the clean image, only for scoring) as the task needs.
    ``progress(done, total, entry)`` is called after every iteration (``pipeline.core.fit``), its
    counts over all the fits of the image (tiles, restarts).

    Whether to tile is decided once, here, before anything is allocated (``choose_tile``: one read
    of the memory budget, less what the whole image holds besides the fits). A fit whose memory
    estimate (``pipeline.core.memory``) exceeds it runs in overlapping tiles blended without seams
    (``restore_tiled``), the largest tile that fits, each fitted whole; with ``options.tiling`` off
    it raises ``FitTooLarge``.
    """
    # 1. The inputs, and the tile: the budget is read once, before any allocation.
    check_inputs(observed, options, mask=mask, guide=guide)
    tile = choose_tile(observed, options)
    # 2. Archive: the defects, found once on the whole image; each tile and restart gets its part.
    if options.task == "archive":
        mask, options = archive_mask(observed, options, mask), replace(options, mask_mode="replace")
    # 3. The fits: N seeded restarts averaged, or one, tiled or whole.
    if options.restarts > 1:
        return restore_averaged(observed, options, tile=tile, mask=mask, reference=reference, guide=guide,
                                progress=progress)
    return _restore_once(observed, options, tile, mask=mask, reference=reference, guide=guide, progress=progress)


def _restore_once(observed: Picture, options: Options, tile: int | None, *, mask: Picture | None,
                  reference: Picture | None, guide: Picture | None, progress: Progress | None = None) -> Restoration:
    """One restore of ``observed``: whole when ``tile`` is None, else in tiles of ``tile`` px
    (observation space), each fitted whole. An archive's ``mask`` is the one found on the image."""
    if tile is None:
        return _restore_whole(observed, options, mask=mask, reference=reference, guide=guide, progress=progress)
    tiled = restore_tiled(observed, options, mask=mask, reference=reference, guide=guide, tile=tile,
                          overlap=max(1, tile // TILE_OVERLAP_DIVISOR), progress=progress)
    if options.task == "archive":
        tiled.mask, tiled.metrics["defect_fraction"] = mask, masked_fraction(mask)
    return tiled


def _restore_whole(
    observed: Picture,
    options: Options,
    *,
    mask: Picture | None = None,
    reference: Picture | None = None,
    guide: Picture | None = None,
    progress: Progress | None = None,
) -> Restoration:
    """One fit of all of ``observed``, never tiled (an image that fits, or one tile of one that
    does not): ``restore``'s arguments, prepare -> fit -> finish."""
    job = prepare(observed, options, mask=mask, reference=reference, guide=guide)
    result = fit(job.net, job.z, job.operator, job.y, job.preset.fit, reference=job.reference, seed=options.seed,
                 device=options.device, time_limit_s=options.time_limit_s, noise_sigma=job.noise_floor,
                 progress=progress)
    return finish(job, result)


def _part(progress: Progress | None, k: int, n: int) -> dict:
    """The progress keyword of fit k of n (counts over all n), none without one."""
    if progress is None:
        return {}
    return {"progress": lambda i, total, entry: progress(k * total + i, n * total, entry)}



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
    tiles and their overlap. Tile k is fitted with seed options.seed + k and no reference;
    ``reference`` (clean, image-sized) scores the blended image once. options.time_limit_s bounds
    all tiles together. The FitResult sums seconds and backtracks, takes the largest iteration
    counts, is stopped_early when every tile was, and has no history; metrics["tiles"] = the count.
    restore_one: what fits one tile, with ``restore``'s signature (default: ``_restore_whole``, one
    fit of the tile: the tile was chosen to fit, and is not tiled again).
    Host memory besides the tiles' fits: the accumulators total [1, C, sH, sW] and weight_sum
    [1, 1, sH, sW], float32 (total becomes the blended image); the noise estimate runs before them.
    """
    restore_one = _restore_whole if restore_one is None else restore_one
    # 1. The tiles, in observation space, and the image space they restore into.
    if options.task == "invert":
        raise ValueError("task 'invert' cannot be tiled: the features are of the whole image")
    check_inputs(observed, options, mask=mask, guide=guide)
    s = options.scale if options.task == "sr" else 1
    height, width = observed.height * s, observed.width * s
    ref = check_reference(reference, observed.channels, height, width)
    boxes = tile_boxes(observed.height, observed.width, tile, overlap)
    noise_sigma = noise_sigma_of(observed)  # before the accumulators: its float64 planes are transient

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
                             reference=None, guide=_crop(guide, top, left, h, w), **_part(progress, k, len(boxes)))
        box = (top * s, left * s, h * s, w * s)
        pixels = result.picture.pixels
        if tuple(pixels.shape) != (1, observed.channels, h * s, w * s):
            raise ValueError(f"a tile came back {list(pixels.shape)} for the box {box} in image space")
        weight = blend_weights(box, height, width, overlap * s)  # (1, 1, h*s, w*s)
        total[..., box[0]:box[0] + box[2], box[1]:box[1] + box[3]] += pixels * weight
        weight_sum[..., box[0]:box[0] + box[2], box[1]:box[1] + box[3]] += weight
        results.append(result)
    image = total.div_(weight_sum)  # (1, C, H, W), in [0, 1]: a convex combination of the tiles, in place
    del total, weight_sum

    # 3. Score the whole image once, carry alpha through, and sum up the fits.
    metrics = score(options.task, image, ref, observed.pixels, baselines={})
    metrics["noise_sigma"] = noise_sigma
    metrics["tiles"] = len(boxes)
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
    tile: int | None,
    mask: Picture | None = None,
    reference: Picture | None = None,
    guide: Picture | None = None,
    progress: Progress | None = None,
) -> Restoration:
    """``options.restarts`` fits of ``observed`` with seeds options.seed, options.seed + 1, ...,
    their outputs averaged pixel by pixel.

    tile: ``choose_tile``'s decision for the image, made once for all the restarts (None: each
    fit is of the whole image; else each runs in tiles of that side). An archive's ``mask`` is the
    one found on the image (``restore`` finds it once). The metrics are the first fit's with psnr,
    ssim and psnr_y of the average, and metrics["restarts"] = N; ``restart_psnr`` holds each fit's
    PSNR. The FitResult sums the fits' seconds (``_summed``); options.time_limit_s bounds each fit.
    """
    runs = [_restore_once(observed, replace(options, restarts=1, seed=options.seed + k), tile, mask=mask,
                          reference=reference, guide=guide, **_part(progress, k, options.restarts))
            for k in range(options.restarts)]
    image = torch.stack([run.fit.image for run in runs]).mean(0)  # [1, C, H, W], in [0, 1]
    first = runs[0]
    metrics = dict(first.metrics)
    if reference is not None:
        ref = check_reference(reference, observed.channels, *image.shape[-2:])
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

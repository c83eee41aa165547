import time
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F

from pipeline.core.fit import FitResult, FitTimeout
from pipeline.core.images import Picture
from pipeline.core.options import Options
from pipeline.core.prepare import Restoration
from pipeline.core.presets import CPU_SMALL
from pipeline.core.restore import restore, restore_tiled
from pipeline.core.tiles import blend_weights, largest_tile, tile_boxes


def picture(pixels, alpha=None):
    return Picture(pixels=pixels, alpha=alpha, bit_depth=8)


def fake_restoration(pixels, options):
    """A real Restoration around ``pixels``, as restore() would return it without fitting."""
    fit = FitResult(image=pixels, best_iteration=3, iterations=5, stopped_early=True, backtracks=1, seconds=0.5)
    return Restoration(picture=picture(pixels), fit=fit, preset=options.resolve(), metrics={})


def identity(observed, options, *, mask=None, reference=None, guide=None):
    return fake_restoration(observed.pixels, options)


def spans(boxes, axis):
    """The distinct (start, length) along rows (axis 0) or columns (axis 1), in order."""
    return sorted({(box[axis], box[axis + 2]) for box in boxes})


@pytest.mark.parametrize("height, width, tile, overlap",
                         [(37, 53, 16, 4), (40, 40, 24, 8), (100, 17, 32, 0), (16, 16, 16, 15), (5, 64, 8, 7)])
def test_boxes_cover_every_pixel_overlap_enough_and_stay_within_the_tile(height, width, tile, overlap):
    boxes = tile_boxes(height, width, tile, overlap)
    covered = torch.zeros(height, width, dtype=torch.int64)
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        assert h == min(tile, height) and w == min(tile, width)  # no slivers
        covered[top:top + h, left:left + w] += 1
    assert covered.min() >= 1
    for axis in (0, 1):
        along = spans(boxes, axis)
        for (start, length), (next_start, _) in pairwise(along):
            assert start + length - next_start >= overlap
        assert along[-1][0] + along[-1][1] == (height, width)[axis]  # flush with the border
    assert len(boxes) == len(spans(boxes, 0)) * len(spans(boxes, 1))


def test_an_image_not_larger_than_the_tile_is_one_box():
    assert tile_boxes(16, 12, 16, 4) == [(0, 0, 16, 12)]


@pytest.mark.parametrize("tile, overlap", [(4, 4), (4, 5), (8, -1), (0, 0)])
def test_bad_tile_or_overlap_is_refused_naming_the_values(tile, overlap):
    with pytest.raises(ValueError, match=f"tile={tile}|got {tile}"):
        tile_boxes(37, 53, tile, overlap)


def test_blend_weights_are_positive_ramp_inside_and_normalise_to_exactly_one():
    height, width, overlap = 37, 53, 4
    boxes = tile_boxes(height, width, 16, overlap)
    total, weight_sum = torch.zeros(1, 1, height, width), torch.zeros(1, 1, height, width)
    for top, left, h, w in boxes:
        weight = blend_weights((top, left, h, w), height, width, overlap)
        assert weight.shape == (1, 1, h, w)
        assert weight.min() > 0 and weight.max() <= 1
        total[..., top:top + h, left:left + w] += torch.ones(1, 1, h, w) * weight
        weight_sum[..., top:top + h, left:left + w] += weight
    assert torch.equal(total / weight_sum, torch.ones(1, 1, height, width))
    corner = blend_weights(boxes[0], height, width, overlap)[0, 0]
    assert corner[0, 0] == 1  # image borders are not ramped
    assert corner[-1, -1] < 0.05 and corner[-1, 0] < 0.2  # the inner edges are
    assert torch.all(corner[:, 0].diff() <= 0)  # the ramp falls towards the neighbour


def test_two_tiles_overlapping_by_exactly_overlap_weigh_one_in_total():
    left = blend_weights((0, 0, 1, 10), 1, 16, 4)
    right = blend_weights((0, 6, 1, 10), 1, 16, 4)
    torch.testing.assert_close(left[..., 6:] + right[..., :4], torch.ones(1, 1, 1, 4))


def test_a_constant_tile_output_stitches_to_that_constant_without_seams():
    def constant(observed, options, **_):
        return fake_restoration(torch.full_like(observed.pixels, 0.3), options)

    result = restore_tiled(picture(torch.rand(1, 3, 37, 53)), Options(task="denoise", preset=CPU_SMALL),
                           tile=16, overlap=4, restore_one=constant)
    torch.testing.assert_close(result.picture.pixels, torch.full((1, 3, 37, 53), 0.3))


def test_identity_tiles_reproduce_the_input_and_each_tile_gets_its_own_seed_and_crops():
    image, mask = torch.rand(1, 3, 37, 53), (torch.rand(1, 3, 37, 53) > 0.5).float()
    calls = []

    def spy(observed, options, *, mask=None, reference=None, guide=None):
        calls.append((options.seed, reference, mask.pixels.shape == observed.pixels.shape))
        return identity(observed, options)

    alpha = torch.rand(1, 1, 37, 53)
    result = restore_tiled(picture(image, alpha), Options(task="inpaint", preset=CPU_SMALL, seed=7),
                           mask=picture(mask), reference=picture(image), tile=16, overlap=4, restore_one=spy)
    torch.testing.assert_close(result.picture.pixels, image, rtol=0, atol=1e-6)
    assert torch.equal(result.picture.alpha, alpha)
    n = len(tile_boxes(37, 53, 16, 4))
    assert [c[0] for c in calls] == list(range(7, 7 + n))
    assert all(ref is None and same_size for _, ref, same_size in calls)
    assert result.metrics["tiles"] == n and result.metrics["psnr"] > 100  # scored once, on the whole image
    assert (result.fit.iterations, result.fit.best_iteration, result.fit.backtracks) == (5, 3, n)
    assert result.fit.stopped_early and result.fit.seconds == pytest.approx(0.5 * n)


def test_super_resolution_tiles_are_stitched_at_scale_times_the_observation():
    def upsample(observed, options, **_):
        return fake_restoration(F.interpolate(observed.pixels, scale_factor=options.scale, mode="nearest"), options)

    low = torch.rand(1, 3, 19, 27)
    result = restore_tiled(picture(low), Options(task="sr", scale=4, preset=CPU_SMALL),
                           tile=12, overlap=4, restore_one=upsample)
    assert result.picture.pixels.shape == (1, 3, 76, 108)
    torch.testing.assert_close(result.picture.pixels, F.interpolate(low, scale_factor=4, mode="nearest"),
                               rtol=0, atol=1e-6)


def test_the_time_limit_bounds_all_tiles_together():
    limits = []

    def slow(observed, options, **_):
        limits.append(options.time_limit_s)
        time.sleep(0.6)
        return identity(observed, options)

    options = Options(task="denoise", preset=CPU_SMALL, time_limit_s=1.0)
    with pytest.raises(FitTimeout, match="after 2 of 4 tiles"):
        restore_tiled(picture(torch.rand(1, 3, 40, 40)), options, tile=24, overlap=8, restore_one=slow)
    assert limits[0] <= 1.0 and limits[1] <= 0.4


def test_a_reference_or_mask_of_the_wrong_size_is_refused_before_any_fit():
    image = picture(torch.rand(1, 3, 37, 53))
    with pytest.raises(ValueError, match="reference is 53x37"):
        restore_tiled(picture(torch.rand(1, 3, 10, 10)), Options(task="sr", scale=2, preset=CPU_SMALL),
                      reference=image, tile=8, overlap=2, restore_one=identity)
    with pytest.raises(ValueError, match="mask is 10x10"):
        restore_tiled(image, Options(task="inpaint", preset=CPU_SMALL), mask=picture(torch.rand(1, 3, 10, 10)),
                      tile=16, overlap=4, restore_one=identity)


def test_a_tiny_real_tiled_denoise_returns_a_full_size_image_in_range():
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(1, 3, 40, 40, generator=generator)
    noisy = (clean + 0.1 * torch.randn(1, 3, 40, 40, generator=generator)).clamp(0, 1)
    result = restore_tiled(picture(noisy), Options(task="denoise", preset=CPU_SMALL, iterations=20),
                           reference=picture(clean), tile=24, overlap=8, restore_one=restore)
    pixels = result.picture.pixels
    assert pixels.shape == (1, 3, 40, 40)
    assert torch.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1
    assert result.metrics["tiles"] == 4 and result.metrics["psnr"] is not None
    assert result.fit.iterations == 20


def test_largest_tile_finds_the_boundary_and_refuses_the_impossible():
    assert largest_tile(lambda s: s <= 300, 64, 4096) == 300
    assert largest_tile(lambda s: True, 64, 4096) == 4096
    assert largest_tile(lambda s: s <= 64, 64, 4096) == 64
    with pytest.raises(ValueError, match="64 px"):
        largest_tile(lambda s: False, 64, 4096)
    with pytest.raises(ValueError, match="lo=10 hi=5"):
        largest_tile(lambda s: True, 10, 5)


def test_restore_tiles_an_image_over_the_memory_budget_and_refuses_it_with_tiling_off():
    from pipeline.core.memory import FitTooLarge, GiB, memory_needed

    clean = torch.rand(1, 3, 48, 64)
    options = Options(preset="cpu-small", iterations=5)
    whole = memory_needed(picture(clean), options)
    tile32 = memory_needed(picture(clean), options, 32, 32)
    budget_gb = (tile32 + (whole - tile32) / 4) / GiB  # room for a tile, not the image
    restored = restore(picture(clean), Options(preset="cpu-small", iterations=5, memory_budget_gb=budget_gb))
    assert restored.metrics["tiles"] > 1
    assert restored.picture.pixels.shape == clean.shape and torch.isfinite(restored.picture.pixels).all()
    with pytest.raises(FitTooLarge, match=r"64x48 image .*tiling is off"):
        restore(picture(clean), Options(preset="cpu-small", iterations=5, memory_budget_gb=budget_gb, tiling=False))
    assert "tiles" not in restore(picture(clean), options).metrics  # fits whole: one fit, no tiles

import time
from dataclasses import replace
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


def test_restore_tiles_an_image_over_the_memory_budget_and_refuses_it_with_tiling_off(monkeypatch):
    from pipeline.core import memory
    from pipeline.core.memory import FitTooLarge, GiB, memory_needed

    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)  # the budget is the restore's alone
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


# -----------------------------------------------------------------------------
# one decision, one level of tiles


@pytest.fixture
def large():
    """A "large" image, 96x80, with a budget (bytes) that holds a 48 px tile's fit and not the image's."""
    from pipeline.core.memory import MiB, memory_needed

    observed = picture(torch.rand(1, 3, 80, 96, generator=torch.Generator().manual_seed(0)))
    options = Options(preset="cpu-small", iterations=2)
    budget = memory_needed(observed, options, 48, 48) + MiB  # the accumulators and noise estimate take < 1 MiB
    assert memory_needed(observed, options) > budget
    return observed, options, budget


def spy_tiling(monkeypatch):
    """Count choose_tile's calls (and keep its answers), restore_tiled's nesting and the fits."""
    import pipeline.core.restore as restore_module

    seen = {"tiles": [], "depth": 0, "deepest": 0, "fits": 0}
    choose, tiled, fit = restore_module.choose_tile, restore_module.restore_tiled, restore_module.fit

    def counted_choose(observed, options):
        seen["tiles"].append(choose(observed, options))
        return seen["tiles"][-1]

    def counted_tiled(*args, **kwargs):
        seen["depth"] += 1
        seen["deepest"] = max(seen["deepest"], seen["depth"])
        try:
            return tiled(*args, **kwargs)
        finally:
            seen["depth"] -= 1

    def counted_fit(*args, **kwargs):
        seen["fits"] += 1
        return fit(*args, **kwargs)

    monkeypatch.setattr(restore_module, "choose_tile", counted_choose)
    monkeypatch.setattr(restore_module, "restore_tiled", counted_tiled)
    monkeypatch.setattr(restore_module, "fit", counted_fit)
    return seen


def test_a_large_image_is_tiled_at_one_level_and_each_tile_fitted_whole(large, monkeypatch):
    from pipeline.core import memory
    from pipeline.core.memory import GiB

    observed, options, budget = large
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0, raising=False)  # the budget is the restore's alone
    seen = spy_tiling(monkeypatch)
    result = restore(observed, replace(options, memory_budget_gb=budget / GiB))
    assert len(seen["tiles"]) == 1 and 16 <= seen["tiles"][0] < 96  # decided once, at the top
    tile = seen["tiles"][0]
    n = len(tile_boxes(80, 96, tile, max(1, tile // 8)))
    assert seen["deepest"] == 1 and seen["fits"] == n == result.metrics["tiles"] > 1  # no tile was tiled again
    assert result.picture.pixels.shape == (1, 3, 80, 96) and torch.isfinite(result.picture.pixels).all()


@pytest.mark.parametrize("restarts", [1, 2])
def test_the_budget_is_read_once_though_free_memory_shrinks_at_each_read(large, restarts, monkeypatch):
    from pipeline.core import memory

    observed, options, budget = large
    reads = []

    def shrinking(device):  # what the bug did: each level's allocations leave less free memory
        reads.append(device)
        return int(budget * 0.9 ** (len(reads) - 1))

    monkeypatch.setattr(memory, "available_bytes", shrinking)
    seen = spy_tiling(monkeypatch)
    result = restore(observed, replace(options, restarts=restarts))  # no memory_budget_gb: MemAvailable
    assert reads == ["cpu"] and seen["deepest"] == 1  # one read, one level of tiles
    tile = seen["tiles"][0]
    n = len(tile_boxes(80, 96, tile, max(1, tile // 8)))
    assert result.metrics["tiles"] == n and seen["fits"] == restarts * n
    assert result.metrics.get("restarts", 1) == restarts


def test_a_budget_too_small_for_the_smallest_tile_fails_before_any_fit(large, monkeypatch):
    import pipeline.core.restore as restore_module
    from pipeline.core import memory
    from pipeline.core.memory import FitTooLarge

    observed, options, _ = large
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0, raising=False)
    monkeypatch.setattr(restore_module, "fit", lambda *a, **k: pytest.fail("a fit started"))
    with pytest.raises(FitTooLarge, match=r"96x80 image \(denoise, preset cpu-small\): even a 16x16 tile needs "
                                          r"about 0\.50 GiB .* 0\.10 GiB is left of the 0\.10 GiB budget"):
        restore(observed, replace(options, memory_budget_gb=0.1))


def test_an_archive_scan_whose_detection_does_not_fit_is_refused_before_it_runs(monkeypatch):
    import pipeline.core.restore as restore_module
    from pipeline.core import memory
    from pipeline.core.memory import FitTooLarge

    monkeypatch.setattr(memory, "available_bytes", lambda device: 100 * 2**20)
    monkeypatch.setattr(restore_module, "archive_mask", lambda *a, **k: pytest.fail("the detection ran"))
    scan = picture(torch.rand(1, 3, 1000, 1200))  # the detector takes about 36 float32 planes: 165 MiB
    with pytest.raises(FitTooLarge, match=r"1200x1000 image \(archive.*defects.*0\.1[67] GiB but 0\.10 GiB"):
        restore(scan, Options(task="archive", preset="cpu-small", iterations=2))


def test_a_balanced_tile_keeps_the_count_of_the_largest_and_covers_with_less_overlap():
    from pipeline.core.tiles import balanced_tile

    for height, width, largest in ((3000, 4000, 2864), (80, 96, 60), (3000, 4000, 1000), (50, 50, 64)):
        side = balanced_tile(height, width, largest, lo=16)
        count = len(tile_boxes(height, width, largest, max(1, largest // 8)))
        assert side <= largest and len(tile_boxes(height, width, side, max(1, side // 8))) == count
        if side > 16:  # a side smaller by one needs more tiles
            assert len(tile_boxes(height, width, side - 1, max(1, (side - 1) // 8))) > count
    assert balanced_tile(3000, 4000, 2864, lo=16) < 2200  # 4 tiles of about 2,130 px, not 2,864

"""Dust and scratches: the synthetic archive model, the detector, and the archive fit that fills them."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from pipeline.core import restore as restore_module
from pipeline.core.defects import detect_defects
from pipeline.core.images import Picture
from pipeline.core.noise import estimate_noise
from pipeline.core.operators import parse_degradation
from pipeline.core.options import Options
from pipeline.core.prepare import archive_mask
from pipeline.core.presets import CPU_SMALL
from pipeline.core.restore import restore
from pipeline.core.synthetic import VISIBLE, archive_scan, synthesize
from tests.core.test_fit import smooth_image


def picture(pixels):
    return Picture(pixels=pixels, alpha=None, bit_depth=8)


def planted(h=96, w=96, sigma=6.0, seed=0, opacity=1.0):
    """A smooth image with grain, two dark and one bright speck, a bright vertical scratch and a dark
    diagonal one (laid over at ``opacity``); returns (noisy [1, 3, H, W], defect pixels (H, W) bool,
    clean)."""
    clean = smooth_image(h, w)
    image = clean.clone()
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    defect = torch.zeros(h, w, dtype=torch.bool)
    for (r, c, radius, tone) in ((20, 20, 2.0, 0.05), (70, 25, 1.5, 0.05), (30, 75, 2.5, 0.97)):
        disc = (rows - r) ** 2 + (cols - c) ** 2 <= radius ** 2
        image[..., disc], defect = tone, defect | disc
    vertical = (cols >= 60) & (cols <= 61)
    diagonal = (rows - cols == 5) & (rows > 40)
    image[..., vertical], image[..., diagonal] = 0.98, 0.03
    defect |= vertical | diagonal
    image = clean * (1 - opacity) + image * opacity
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed)) * sigma / 255
    return (image + noise).clamp(0, 1), defect, clean


def test_the_detector_finds_planted_specks_and_scratches_and_little_else():
    noisy, defect, _ = planted()
    found = detect_defects(noisy)
    masked = torch.from_numpy(~found.keep)
    assert (masked & defect).sum() >= 0.9 * defect.sum()  # recall
    edge = F.max_pool2d(defect[None, None].float(), 3, 1, 1)[0, 0].bool()  # the defects and 1 px around
    assert (masked & ~edge).sum() <= 0.02 * masked.sum()  # precision, allowing the 1-px edge
    assert found.specks == 3 and found.scratches == 2
    assert found.fraction == pytest.approx(masked.float().mean().item())


def test_a_clean_grainy_image_has_a_nearly_empty_mask():
    clean = smooth_image(128, 128)
    noisy = (clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(3)) * 12 / 255).clamp(0, 1)
    assert detect_defects(noisy).fraction < 0.002


def test_a_highlight_that_keeps_the_colour_of_its_background_is_not_dust():
    """On a red background a bright grey speck is dust; a bright red one (the picture's highlight) is not."""
    h = w = 96
    image = torch.tensor([0.6, 0.15, 0.15]).view(1, 3, 1, 1).expand(1, 3, h, w).clone()
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grey = (rows - 30) ** 2 + (cols - 30) ** 2 <= 4
    red = (rows - 65) ** 2 + (cols - 65) ** 2 <= 4
    image[..., grey] = 0.95
    image[..., red] = torch.tensor([0.95, 0.35, 0.35])[:, None]  # brighter, same hue
    noisy = (image + torch.randn(image.shape, generator=torch.Generator().manual_seed(2)) * 4 / 255).clamp(0, 1)
    masked = torch.from_numpy(~detect_defects(noisy).keep)
    assert masked[grey].float().mean() > 0.9
    assert not masked[red].any()


def test_a_dark_detail_with_a_colour_is_the_pictures_and_a_dark_grey_speck_is_dust():
    """Dark specks: on light grey, a grey one is dust and a blue one (a shadow on snow) is not; on
    yellow, a grey one is dust and a shadow keeping the yellow (every channel at 0.75, as dark as the
    grey one) is not."""
    h, w = 96, 192
    image = torch.tensor([0.75, 0.75, 0.75]).view(1, 3, 1, 1).expand(1, 3, h, w).clone()
    image[..., w // 2:] = torch.tensor([0.95, 0.85, 0.2])[:, None, None]
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    specks = {name: (rows - r) ** 2 + (cols - c) ** 2 <= 5
              for name, r, c in (("grey on grey", 30, 30), ("blue on grey", 65, 65),
                                 ("grey on yellow", 30, 126), ("shadow on yellow", 65, 161))}
    for name, tone in (("grey on grey", (0.3, 0.3, 0.3)), ("blue on grey", (0.45, 0.5, 0.7)),
                       ("grey on yellow", (0.5, 0.5, 0.5)), ("shadow on yellow", (0.7125, 0.6375, 0.15))):
        image[..., specks[name]] = torch.tensor(tone)[:, None]
    noisy = (image + torch.randn(image.shape, generator=torch.Generator().manual_seed(5)) * 4 / 255).clamp(0, 1)
    masked = torch.from_numpy(~detect_defects(noisy).keep)
    assert masked[specks["grey on grey"]].float().mean() > 0.9
    assert masked[specks["grey on yellow"]].float().mean() > 0.9
    assert not masked[specks["blue on grey"]].any()
    assert not masked[specks["shadow on yellow"]].any()


def test_a_family_of_parallel_lines_is_structure_and_a_lone_line_a_scratch():
    """Four parallel dark lines (mortar joints, planks) are left alone; one of them alone is a scratch."""
    h = w = 128
    clean = smooth_image(h, w)
    rows = torch.arange(h)[:, None].expand(h, w)
    lines = torch.zeros(h, w, dtype=torch.bool)
    for r in (30, 55, 80, 105):
        lines |= rows == r
    family, lone = clean.clone(), clean.clone()
    family[..., lines] = 0.05
    lone[..., rows == 55] = 0.05
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(4)) * 6 / 255
    assert detect_defects((family + noise).clamp(0, 1)).scratches == 0
    found = detect_defects((lone + noise).clamp(0, 1))
    assert found.scratches == 1 and (~found.keep)[55].mean() > 0.9


def test_a_long_faint_scratch_between_the_hough_angles_is_masked_on_its_line():
    """A faint 1 px scratch (near-black at 40% opacity: about 0.2 darker; grain 12) at 33.25 degrees
    across 512 px: the transform's half-degree bins alone put its ends about 1.5 px off the line
    (before the refit, 4% of the mask lay further than 1 px from the scratch); refitted to its
    pixels, the mask stays on it."""
    h = w = 512
    clean = smooth_image(h, w)
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    angle = torch.tensor(33.25).deg2rad()
    offset = cols * torch.cos(angle) + rows * torch.sin(angle) - 280.0
    scratch = offset.abs() <= 0.5
    image = clean.clone()
    image[..., scratch] = image[..., scratch] * 0.6 + 0.05 * 0.4  # 40% opaque: about 0.2 darker
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(5)) * 12 / 255
    found = detect_defects((image + noise).clamp(0, 1))
    masked = torch.from_numpy(~found.keep)
    assert found.scratches == 1
    assert (masked & scratch).sum() >= 0.95 * scratch.sum()
    assert (masked & (offset.abs() > 1.5)).sum() <= 0.01 * masked.sum()


def test_sensitivity_trades_faint_defects_for_false_ones():
    noisy, _, _ = planted()
    faint, _, _ = planted(opacity=0.3)
    low, high = detect_defects(faint, sensitivity=0.5), detect_defects(faint, sensitivity=2.0)
    assert (~high.keep).sum() > (~low.keep).sum()
    for bad in (0, -1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="sensitivity must be a positive number"):
            detect_defects(noisy, sensitivity=bad)
    with pytest.raises(ValueError, match=r"H, W >= 8"):
        detect_defects(torch.zeros(1, 3, 4, 40))
    with pytest.raises(ValueError, match="defect_sensitivity"):
        Options(task="archive", defect_sensitivity=0.0)


def test_the_archive_model_is_seeded_and_its_mask_marks_what_the_defects_changed():
    clean = smooth_image(128, 160)
    observed, keep, sigma = archive_scan(clean, 12.0, defects=True, seed=5)
    again, keep_again, _ = archive_scan(clean, 12.0, defects=True, seed=5)
    assert torch.equal(observed, again) and torch.equal(keep, keep_again)
    assert keep.shape == (1, 1, 128, 160) and 0.002 < 1 - keep.mean().item() < 0.2
    changed = (observed - clean).abs().amax(dim=1, keepdim=True)
    assert changed[keep == 0].min() >= VISIBLE - 6 * sigma / 255  # a defect pixel moved by VISIBLE (plus grain)
    grain, no_defects, grain_sigma = archive_scan(clean, 12.0, defects=False, seed=5)
    assert no_defects.min() == 1
    assert estimate_noise(grain).sigma == pytest.approx(grain_sigma, rel=0.1)
    synthetic = synthesize(picture(clean), "archive:12", seed=5)
    assert synthetic.task == "archive" and torch.equal(synthetic.defects.pixels, keep)
    assert parse_degradation("grain:7") == ("grain", 7.0)
    with pytest.raises(ValueError, match="archive:SIGMA"):
        parse_degradation("archive:x")


def test_a_user_mask_is_combined_with_the_detected_one_or_replaces_it():
    noisy, defect, _ = planted()
    user = torch.ones(1, 1, 96, 96)
    user[..., 80:90, 80:90] = 0
    options = Options(task="archive", preset=CPU_SMALL)
    combined = archive_mask(picture(noisy), options, picture(user)).pixels
    detected = archive_mask(picture(noisy), options, None).pixels
    assert torch.equal(combined, detected * user)
    replaced = archive_mask(picture(noisy), replace(options, mask_mode="replace"), picture(user)).pixels
    assert torch.equal(replaced, user)


@pytest.fixture(scope="module")
def scratched():
    """A 48x48 smooth image with grain and a dark vertical scratch of contrast about 0.6."""
    clean = smooth_image(48, 48)
    image = clean.clone()
    image[..., :, 30:32] = 0.05
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(2)) * 5 / 255
    return picture((image + noise).clamp(0, 1)), picture(clean)


def test_an_archive_fit_fills_a_scratch_that_denoising_keeps(scratched):
    observed, clean = scratched
    scratch = torch.zeros(48, 48, dtype=torch.bool)
    scratch[:, 30:32] = True
    errors = {}
    for task in ("archive", "denoise"):
        result = restore(observed, Options(task=task, preset=CPU_SMALL, iterations=300, early_stop=False),
                         reference=clean)
        errors[task] = (result.picture.pixels - clean.pixels).abs().mean(dim=1)[0][scratch].mean().item()
        if task == "archive":
            assert result.mask is not None and result.metrics["defect_fraction"] >= scratch.float().mean().item()
            assert (result.mask.pixels[0, 0][scratch] == 0).float().mean() > 0.9
            assert result.summary()["stop_rule"] == "fixed"
    contrast = (observed.pixels - clean.pixels).abs().mean(dim=1)[0][scratch].mean().item()
    assert errors["archive"] < 0.2 * contrast < errors["denoise"]


def test_an_archive_fit_stops_by_the_discrepancy_rule_by_default(scratched):
    observed, _ = scratched
    options = Options(task="archive", preset=CPU_SMALL, iterations=3000)
    assert options.resolve().fit.early_stop.rule == "discrepancy"
    result = restore(observed, options)
    assert result.fit.stopped_early and result.fit.iterations < 3000
    assert result.summary()["stop_rule"] == "discrepancy"


def test_a_tiled_archive_fit_uses_the_whole_images_mask(scratched, monkeypatch):
    observed, clean = scratched
    tiles = []
    monkeypatch.setattr(restore_module, "choose_tile", lambda picture, options: 32 if picture.width > 32 else None)
    real = restore_module.restore_tiled

    def tiled(*args, **kwargs):
        tiles.append(kwargs["mask"])
        return real(*args, **kwargs)

    monkeypatch.setattr(restore_module, "restore_tiled", tiled)
    options = Options(task="archive", preset=CPU_SMALL, iterations=30, early_stop=False)
    result = restore(observed, options, reference=clean)
    assert result.metrics["tiles"] == 4
    whole = archive_mask(observed, options, None)
    assert torch.equal(result.mask.pixels, whole.pixels) and torch.equal(tiles[0].pixels, whole.pixels)
    assert result.metrics["defect_fraction"] == pytest.approx(1 - whole.pixels.mean().item())

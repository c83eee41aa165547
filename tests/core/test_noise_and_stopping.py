"""The noise level without ground truth, and the discrepancy stopping rule that uses it."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.core.config import EarlyStopConfig, FitConfig
from pipeline.core.images import Picture, read
from pipeline.core.metrics import psnr
from pipeline.core.noise import estimate_noise
from pipeline.core.operators import Denoise, Inpainting
from pipeline.core.options import Options
from pipeline.core.restore import restore
from tests.core.test_fit import run, smooth_image
from tests.core.test_restore import SAMPLES


@pytest.mark.parametrize("sigma", [5, 10, 25, 50])
def test_sigma_is_estimated_within_ten_percent_on_a_smooth_image(sigma):
    clean = smooth_image(96, 96)
    noisy = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(sigma)) * sigma / 255
    level = estimate_noise(noisy)  # unclipped: the estimator's own accuracy
    assert level.sigma == pytest.approx(sigma, rel=0.1)
    assert len(level.per_channel) == 3 and all(s == pytest.approx(sigma, rel=0.15) for s in level.per_channel)


@pytest.mark.parametrize("sigma", [5, 10])
def test_texture_does_not_raise_sigma_on_a_large_image(sigma):
    """Half fine texture, half smooth: the whole-image estimator reads the texture as noise, the
    block estimator takes the smooth half."""
    from skimage.restoration import estimate_sigma

    generator = torch.Generator().manual_seed(sigma)
    clean = smooth_image(320, 320)
    texture = torch.rand(1, 1, 160, 320, generator=generator) * 0.4  # a grey texture over the top half
    clean[..., :160, :] = (clean[..., :160, :] * 0.7 + texture).clamp(0, 1)
    noisy = (clean + torch.randn(clean.shape, generator=generator) * sigma / 255).clamp(0, 1)
    whole = float(np.mean(estimate_sigma(noisy[0].permute(1, 2, 0).numpy().astype(np.float64), channel_axis=-1))) * 255
    assert whole > 1.4 * sigma  # the texture, read as noise
    assert estimate_noise(noisy).sigma == pytest.approx(sigma, rel=0.1)


@pytest.mark.parametrize("sigma", [5, 10])
def test_fine_texture_in_every_block_does_not_raise_sigma(sigma):
    """Fine stripes (2.5-5 px periods, at three angles) over the whole image: no block is flat, and
    the finest wavelet coefficients read the stripes as noise, but the stripes lie in a few
    principal components of the patches, so the eigenvalues left are the noise's."""
    from skimage.restoration import estimate_sigma

    yy, xx = torch.meshgrid(torch.arange(320.0), torch.arange(320.0), indexing="ij")
    stripes = sum(torch.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period)
                  for a, period in ((0.3, 2.5), (1.2, 3.5), (2.2, 5.0)))
    clean = smooth_image(320, 320) * 0.5 + 0.25 + 0.08 * stripes  # within [0.11, 0.89]: no clipping
    noisy = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(sigma)) * sigma / 255
    whole = float(np.mean(estimate_sigma(noisy[0].numpy().astype(np.float64), channel_axis=0))) * 255
    assert whole > 1.2 * sigma  # the stripes, read as noise (the flattest blocks' wavelet σ: 2.9x, 1.7x)
    assert estimate_noise(noisy).sigma == pytest.approx(sigma, rel=0.1)


def test_a_clean_image_has_little_noise_and_bad_shapes_are_refused():
    assert estimate_noise(smooth_image(64, 64)).sigma < 1.0
    assert estimate_noise(smooth_image(12, 12)).sigma < 1.0  # smaller than one block
    with pytest.raises(ValueError, match=r"\[1, C, H, W\]"):
        estimate_noise(np.zeros((3, 8, 8)))


def test_the_discrepancy_rule_stops_a_long_fit_before_its_budget_without_losing_to_it():
    h = w = 32
    clean = smooth_image(h, w)
    sigma = 25 / 255
    noisy = (clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(1)) * sigma).clamp(0, 1)
    config = FitConfig(iterations=1500, lr=0.01, check_every=10, backtrack=True)  # Adam spikes at ~1200 without
    fixed = run(Denoise(), noisy, config, h=h, w=w, reference=clean)
    rule = EarlyStopConfig(rule="discrepancy")
    stopped = run(Denoise(), noisy, replace(config, early_stop=rule), h=h, w=w, reference=clean, noise_sigma=sigma)
    assert stopped.stopped_early and stopped.iterations < config.iterations
    assert stopped.fired_at == stopped.iterations == stopped.best_iteration
    assert psnr(stopped.image, clean) >= psnr(fixed.image, clean)
    # the residual of the returned image is at the noise floor, not below it (the noise is not fitted)
    residual = (stopped.image - noisy).square().mean().sqrt().item()
    assert residual == pytest.approx(sigma, rel=0.2)


def test_the_discrepancy_rule_needs_a_noise_level():
    config = FitConfig(iterations=5, early_stop=EarlyStopConfig(rule="discrepancy"))
    with pytest.raises(ValueError, match="noise level"):
        run(Denoise(), smooth_image(16, 16), config, h=16, w=16)  # no noise_sigma given


def test_inpainting_leaves_noise_only_on_its_known_pixels():
    mask = torch.zeros(1, 1, 10, 10)
    mask[..., :5, :] = 1
    assert Inpainting(mask).noise_floor(0.1) == pytest.approx(0.1 * 0.5**0.5)
    assert Denoise().noise_floor(0.1) == 0.1


def test_restore_records_the_noise_level_and_the_rule_it_stopped_by():
    clean = read(SAMPLES / "f16.png")
    noise = torch.randn(clean.pixels.shape, generator=torch.Generator().manual_seed(0)) * 25 / 255
    noisy = Picture(pixels=(clean.pixels + noise).clamp(0, 1))
    options = Options(task="denoise", preset="cpu-small", iterations=600, early_stop=True, stop_rule="discrepancy")
    result = restore(noisy, options, reference=clean)
    summary = result.summary()
    assert summary["noise_sigma"] == pytest.approx(25, rel=0.15) and summary["stop_rule"] == "discrepancy"
    assert result.fit.stopped_early and result.fit.iterations < 600
    plain = restore(noisy, Options(task="denoise", preset="cpu-small", iterations=5)).summary()
    assert plain["stop_rule"] == "fixed" and plain["noise_sigma"] == pytest.approx(summary["noise_sigma"])


def test_a_tiny_image_has_no_noise_level_and_the_discrepancy_rule_runs_its_budget():
    tiny = Picture(pixels=torch.rand(1, 3, 3, 7, generator=torch.Generator().manual_seed(0)))
    options = Options(task="denoise", preset="cpu-small", iterations=20, early_stop=True, stop_rule="discrepancy")
    result = restore(tiny, options)
    assert result.summary()["noise_sigma"] is None
    assert result.fit.iterations == 20 and not result.fit.stopped_early

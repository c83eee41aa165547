import pytest
import torch

from pipeline.core.baselines import (
    TV_DENOISE_PER_SIGMA,
    bicubic,
    degraded_input,
    total_variation,
    tv_restore,
    tv_weight,
)
from pipeline.core.metrics import psnr
from pipeline.core.operators import Denoise, Inpainting, SuperResolution, bernoulli_mask
from tests.core.test_fit import smooth_image


def test_bicubic_upsamples_to_the_scaled_size():
    low = torch.rand(1, 3, 9, 7)
    assert bicubic(low, 4).shape == (1, 3, 36, 28)
    assert degraded_input(SuperResolution(4), low).shape == (1, 3, 36, 28)
    assert degraded_input(Denoise(), low) is low


def test_total_variation_is_zero_on_a_constant_and_grows_with_edges():
    flat = torch.full((1, 3, 8, 8), 0.5)
    edge = flat.clone()
    edge[..., 4:] = 1.0
    assert total_variation(flat) < 0.05  # only the sqrt epsilon (1e-4 a pixel)
    assert total_variation(edge) > 10 * total_variation(flat)


def test_tv_prior_denoises_far_better_than_the_noisy_input_with_its_calibrated_weight():
    clean = smooth_image(37, 31)
    for sigma in (15, 25, 50):
        noisy = Denoise(sigma).degrade(clean, torch.Generator().manual_seed(0))
        assert tv_weight(Denoise(sigma)) == pytest.approx(TV_DENOISE_PER_SIGMA[sigma] * sigma / 255)
        restored = tv_restore(Denoise(sigma), noisy)  # the weight from the operator's sigma
        assert psnr(restored, clean) > psnr(noisy, clean) + 6, sigma
        estimated = tv_restore(Denoise(), noisy, noise_sigma=sigma)  # or from an estimate of it
        assert torch.allclose(estimated, restored)
    assert tv_weight(Denoise(), noise_sigma=40) == pytest.approx((0.6 + 0.1 * 15 / 25) * 40 / 255)  # interpolated
    with pytest.raises(ValueError, match="-1"):
        tv_restore(Denoise(), noisy, weight=-1)


def test_tv_prior_uses_the_operator_for_inpainting_and_super_resolution():
    clean = smooth_image(32, 32)
    mask = bernoulli_mask(32, 32, 0.5, torch.Generator().manual_seed(0))
    observed = Inpainting(mask).degrade(clean, torch.Generator())
    filled = tv_restore(Inpainting(mask), observed)
    holes = mask[0, 0] == 0
    assert psnr(filled[:, :, holes], clean[:, :, holes]) > psnr(observed[:, :, holes], clean[:, :, holes]) + 5
    op = SuperResolution(2)
    low = op.degrade(clean, torch.Generator())
    high = tv_restore(op, low)
    assert high.shape == clean.shape
    assert psnr(high, clean) > psnr(bicubic(low, 2), clean) + 0.5

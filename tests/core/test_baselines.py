import torch

from pipeline.core.baselines import bicubic, degraded_input, total_variation, tv_restore
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


def test_tv_prior_denoises_better_than_the_noisy_input():
    clean = smooth_image(37, 31)
    noisy = Denoise(25).degrade(clean, torch.Generator().manual_seed(0))
    restored = tv_restore(Denoise(), noisy, weight=0.1, iterations=200, lr=0.01)
    assert psnr(restored, clean) > psnr(noisy, clean) + 3


def test_tv_prior_uses_the_operator_for_inpainting_and_super_resolution():
    clean = smooth_image(32, 32)
    mask = bernoulli_mask(32, 32, 0.5, torch.Generator().manual_seed(0))
    observed = Inpainting(mask).degrade(clean, torch.Generator())
    filled = tv_restore(Inpainting(mask), observed, weight=0.05, iterations=300, lr=0.02)
    holes = mask[0, 0] == 0
    assert psnr(filled[:, :, holes], clean[:, :, holes]) > psnr(observed[:, :, holes], clean[:, :, holes]) + 5
    op = SuperResolution(2)
    low = op.degrade(clean, torch.Generator())
    high = tv_restore(op, low, weight=1e-3, iterations=100)
    assert high.shape == clean.shape
    assert psnr(high, clean) > psnr(bicubic(low, 2), clean) - 1  # at least about as good as bicubic

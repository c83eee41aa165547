import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.images import read, to_uint8
from pipeline.core.metrics import psnr, psnr_y, ssim

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SET5 = ["baby", "bird", "butterfly", "head", "woman"]
COLOR_SIGMA25 = [
    "F16", "baboon", "hill", "kodim01", "kodim02", "kodim03", "kodim12", "lena", "peppers"
]


def _data(folder: str) -> Path:
    if not (DATA / folder).is_dir():
        pytest.skip(f"reference data not found at {DATA / folder}")
    return DATA / folder


def test_psnr_of_a_known_mse():
    x = torch.zeros(1, 3, 8, 8)
    y = torch.full((1, 3, 8, 8), 0.1)  # MSE = 0.01 -> 20 dB at peak 1
    assert psnr(x, y) == pytest.approx(20.0)
    assert psnr(x.numpy() * 255, y.numpy() * 255, peak=255) == pytest.approx(20.0)
    assert psnr(x, x) == math.inf


def test_psnr_of_uint8_arrays_does_not_wrap_around():
    a = np.zeros((4, 4), np.uint8)
    b = np.full((4, 4), 255, np.uint8)
    assert psnr(a, b, peak=255) == pytest.approx(0.0)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\[1, 3, 8, 8\].*\[1, 3, 8, 9\]"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match=r"\[8, 8, 3\].*\[9, 8, 3\]"):
        psnr_y(np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8), shave=0)
    with pytest.raises(ValueError, match="shape"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8))


def test_psnr_y_takes_tensors_like_uint8_arrays_and_shaves():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 20, 17, generator=generator)
    y = torch.rand(1, 3, 20, 17, generator=generator)
    assert psnr_y(x, y) == psnr_y(to_uint8(x), to_uint8(y))
    inside = to_uint8(x)
    border = inside.copy()
    border[:2] = 0  # differences only in the 2-pixel border are shaved away
    assert psnr_y(inside, border, shave=2) == math.inf
    with pytest.raises(ValueError, match="uint8"):
        psnr_y(x.numpy(), y.numpy())
    with pytest.raises(ValueError, match="shave 10 pixels"):
        psnr_y(x, y, shave=10)


def test_ssim_identical_is_one_and_small_images():
    x = torch.rand(1, 3, 37, 31, generator=torch.Generator().manual_seed(0))
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(x, 1 - x) < 0.5
    gray = x[:, :1]
    assert ssim(gray, gray) == pytest.approx(1.0)
    assert ssim(gray[0, 0].numpy(), gray[0, 0].numpy()) == pytest.approx(1.0)  # HxW array
    assert ssim(x[..., :4, :5], x[..., :4, :5]) == pytest.approx(1.0)  # window shrunk to 3
    assert math.isnan(ssim(x[..., :2, :5], x[..., :2, :5]))
    with pytest.raises(ValueError, match="uint8"):
        ssim(to_uint8(x), to_uint8(x))


def _authors_region(output: torch.Tensor) -> tuple[slice, slice]:
    """The centre crop, H and W rounded down to multiples of 32, that the authors' network
    produced (their code crops inputs to a multiple of 32); their published Set5 files pad
    it back to full size with a black frame (head: 12 px, woman: 12 rows and 2 columns)."""
    height, width = output.shape[2:]
    top, left = (height % 32) // 2, (width % 32) // 2
    rows, cols = slice(top, top + height - height % 32), slice(left, left + width - width % 32)
    frame = output.clone()
    frame[:, :, rows, cols] = 0
    assert frame.max() == 0, "expected a black frame around the authors' output"
    return rows, cols


def test_set5_x4_luminance_psnr_matches_the_data_readme():
    folder = _data("set5_x4")
    bicubic, deep_prior = [], []
    for name in SET5:
        truth = read(folder / f"{name}_GT.png").pixels
        bicubic.append(psnr_y(read(folder / f"{name}_bicubic.png").pixels, truth))
        output = read(folder / f"{name}_deep_prior.png").pixels
        rows, cols = _authors_region(output)
        deep_prior.append(psnr_y(output[..., rows, cols], truth[..., rows, cols]))
    assert round(float(np.mean(bicubic)), 2) == 28.43
    assert round(float(np.mean(deep_prior)), 2) == 29.89


def test_color_denoising_psnr_matches_the_data_readme():
    folder = _data("denoise_color_sigma25")
    noisy, deep_prior = [], []
    for name in COLOR_SIGMA25:
        truth = read(folder / f"{name}_GT.png").pixels
        noisy.append(psnr(read(folder / f"{name}_noisy.png").pixels, truth))
        deep_prior.append(psnr(read(folder / f"{name}_deep_prior.png").pixels, truth))
    assert round(float(np.mean(noisy)), 2) == 20.37
    assert round(float(np.mean(deep_prior)), 2) == 31.29

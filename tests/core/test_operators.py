import pytest
import torch

from pipeline.core.features import feature_extractor
from pipeline.core.operators import (
    Denoise,
    FeatureInversion,
    Inpainting,
    JpegArtifacts,
    Operator,
    SuperResolution,
    bernoulli_mask,
    lanczos2_kernel,
    parse_degradation,
)
from tests.plain_dip import lanczos2_downsampler  # the authors' Downsampler, transcribed

H, W = 37, 31  # odd sizes catch shape bugs


def make(name: str, h: int = H, w: int = W) -> Operator:
    g = torch.Generator().manual_seed(0)
    return {
        "identity": lambda: Operator(),
        "denoise": lambda: Denoise(25),
        "jpeg": lambda: JpegArtifacts(10),
        "inpaint": lambda: Inpainting(bernoulli_mask(h, w, 0.5, g)),
        "sr2": lambda: SuperResolution(2),
        "sr4": lambda: SuperResolution(4),
        "invert": lambda: FeatureInversion(feature_extractor("alexnet", "conv2", "random"), h, w),
    }[name]()


OPERATORS = ["identity", "denoise", "jpeg", "inpaint", "sr2", "sr4", "invert"]


@pytest.mark.parametrize("name", OPERATORS)
def test_forward_runs_on_odd_sizes_and_keeps_gradients(name):
    op = make(name, 64, 68) if name.startswith("sr") else make(name)
    h, w = op.image_size(16, 17) if name.startswith("sr") else (H, W)
    if name.startswith("sr"):
        op = make(name)
    x = torch.rand(1, 3, h, w, requires_grad=True)
    y = op(x)
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_downsampler_shape_and_constant_preservation(scale):
    op = SuperResolution(scale)
    h, w = op.image_size(9, 7)
    assert (h, w) == (9 * scale, 7 * scale)
    x = torch.full((1, 3, h, w), 0.3)
    y = op(x)
    assert y.shape == (1, 3, 9, 7)
    assert torch.allclose(y, torch.full_like(y, 0.3), atol=1e-5)  # kernel sums to 1


def test_lanczos_kernel_is_symmetric_and_normalised():
    k = lanczos2_kernel(4)
    assert k.shape == (16, 16)
    assert torch.allclose(k, k.flip(0)) and torch.allclose(k, k.T)
    assert abs(k.sum().item() - 1) < 1e-6


def test_downsampler_is_close_to_pillow_lanczos_on_a_smooth_image():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 48), indexing="ij")
    x = torch.stack([xx, yy, (xx + yy) / 2])[None] * 0.8 + 0.1
    op = SuperResolution(4)
    ours, pillow = op(x), op.degrade(x, torch.Generator())
    assert ours.shape == pillow.shape == (1, 3, 16, 12)
    assert (ours - pillow)[..., 1:-1, 1:-1].abs().max() < 0.02


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_downsampler_matches_the_authors_lanczos2_on_a_test_pattern(factor):
    # A zone plate with a hard-edged square: every frequency up to Nyquist, and edges at the border.
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(64.0), indexing="ij")
    zone = 0.5 + 0.5 * torch.cos((xx - 30) ** 2 / 40 + (yy - 50) ** 2 / 40)
    square = ((xx > 8) & (xx < 24) & (yy > 4) & (yy < 40)).float()
    x = torch.stack([zone, square, zone * (1 - square)])[None]
    ours = SuperResolution(factor)(x)
    assert ours.shape == (1, 3, 96 // factor, 64 // factor)
    torch.testing.assert_close(ours, lanczos2_downsampler(x.double(), factor).float(), atol=1e-6, rtol=0)


def test_noise_degradation_is_seeded_and_has_the_right_sigma():
    clean = torch.full((1, 3, 64, 64), 0.5)
    a = Denoise(25).degrade(clean, torch.Generator().manual_seed(1))
    b = Denoise(25).degrade(clean, torch.Generator().manual_seed(1))
    c = Denoise(25).degrade(clean, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs((a - clean).std().item() * 255 - 25) < 1.5


def test_mask_keeps_known_pixels_only():
    mask = bernoulli_mask(H, W, 0.3, torch.Generator().manual_seed(0))
    assert 0.2 < mask.mean() < 0.4
    x = torch.rand(1, 3, H, W)
    y = Inpainting(mask).degrade(x, torch.Generator())
    assert torch.equal(y[:, :, mask[0, 0] == 1], x[:, :, mask[0, 0] == 1])
    assert (y[:, :, mask[0, 0] == 0] == 0).all()


def test_all_black_mask_and_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="no known pixel"):
        Inpainting(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\[1, 1, H, W\]"):
        Inpainting(torch.ones(4, 4))
    with pytest.raises(ValueError, match="not divisible by scale 4"):
        SuperResolution(4).degrade(torch.rand(1, 3, 10, 12), torch.Generator())


def test_jpeg_degradation_changes_the_image_but_keeps_its_size():
    x = torch.rand(1, 3, H, W)
    y = JpegArtifacts(10).degrade(x, torch.Generator())
    assert y.shape == x.shape and (y - x).abs().mean() > 0.01


@pytest.mark.parametrize("spec,expected", [
    ("noise:25", ("noise", 25.0)), ("downsample:4", ("downsample", 4)),
    ("mask:bernoulli:0.5", ("mask", 0.5)), ("jpeg:10", ("jpeg", 10)),
])
def test_parse_degradation(spec, expected):
    assert parse_degradation(spec) == expected


@pytest.mark.parametrize("spec", ["noise", "noise:x", "blur:3", "mask:0.5", "downsample:2.5", "noise:-1", "noise:nan"])
def test_bad_degradation_specs_are_named(spec):
    with pytest.raises(ValueError, match=repr(spec).replace("[", r"\[")):
        parse_degradation(spec)


@pytest.mark.parametrize("value", [0, 1, 17, 2.5])
def test_bad_scales_are_named(value):
    with pytest.raises(ValueError, match=str(value)):
        SuperResolution(value)

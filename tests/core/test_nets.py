"""Behaviour of pipeline/core/nets.py: sizes, ranges, determinism, config checks, gradients."""

import re
from dataclasses import replace

import pytest
import torch

from pipeline.core.nets import (
    NET_VARIANTS,
    NetConfig,
    build_net,
    count_parameters,
    crop_center,
    grid_size,
    make_input,
    skip_config,
)

TINY = NET_VARIANTS["tiny"]


def _run(cfg: NetConfig, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Build cfg's net, run it on the grid for height x width, crop back: [1, out, height, width]."""
    torch.manual_seed(seed)
    net = build_net(cfg)
    gh, gw = grid_size(height, width, cfg.depth, cfg.min_deepest)
    z = make_input("noise", cfg.in_channels, gh, gw, torch.Generator().manual_seed(seed))
    return crop_center(net(z), height, width)


def test_default_skip_has_about_2_2_million_parameters():
    n = count_parameters(build_net(NetConfig()))
    assert 2.0e6 <= n <= 2.4e6, n
    assert count_parameters(build_net(NET_VARIANTS["hourglass"])) < n  # no skip branches


@pytest.mark.parametrize("name", sorted(NET_VARIANTS))
def test_variant_runs_on_odd_size(name):
    cfg = NET_VARIANTS[name]
    with torch.no_grad():
        y = _run(cfg, 37, 31)
    assert y.shape == (1, cfg.out_channels, 37, 31)
    assert torch.isfinite(y).all()
    assert 0.0 <= y.min() and y.max() <= 1.0


@pytest.mark.parametrize("name", sorted(NET_VARIANTS))
def test_gradients_reach_every_parameter(name):
    cfg = NET_VARIANTS[name]
    net = build_net(cfg)
    gh, gw = grid_size(5, 7, cfg.depth, cfg.min_deepest)
    z = make_input("noise", cfg.in_channels, gh, gw, torch.Generator().manual_seed(0))
    net(z).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_depth():
    assert NetConfig().depth == 5
    assert NET_VARIANTS["skip6"].depth == 6
    assert TINY.depth == 3
    assert NET_VARIANTS["resnet"].depth == 0


@pytest.mark.parametrize("upsample_mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("downsample_mode", ["stride", "avg", "max"])
@pytest.mark.parametrize("pad", ["reflection", "zero"])
def test_modes_run(upsample_mode, downsample_mode, pad):
    cfg = replace(TINY, upsample_mode=upsample_mode, downsample_mode=downsample_mode, pad=pad)
    y = _run(cfg, 19, 13)
    assert y.shape == (1, 3, 19, 13)


def test_no_sigmoid_and_other_channel_counts():
    cfg = replace(TINY, in_channels=2, out_channels=1, need_sigmoid=False, need_1x1_up=False,
                  channels_skip=(0, 4, 0))
    net = build_net(cfg)
    z = make_input("meshgrid", 2, 16, 16, torch.Generator())
    assert net(z).shape == (1, 1, 16, 16)


def test_forward_rejects_input_off_the_grid():
    net = build_net(TINY)
    with pytest.raises(ValueError, match="37x31"):
        net(torch.zeros(1, TINY.in_channels, 37, 31))
    with pytest.raises(ValueError, match=r"\[1, 3, 16, 16\]"):
        net(torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("height, width, depth, min_deepest, expected", [
    (64, 64, 5, 2, (64, 64)),
    (65, 64, 5, 2, (96, 64)),
    (512, 384, 5, 2, (512, 384)),
    (37, 31, 5, 2, (64, 64)),  # 31 -> 32 would leave a 1 px deepest map
    (37, 31, 3, 2, (40, 32)),
    (37, 31, 0, 2, (37, 31)),
    (1, 1, 0, 2, (2, 2)),
    (40, 40, 3, 3, (40, 40)),
    (16, 16, 3, 3, (24, 24)),
])
def test_grid_size(height, width, depth, min_deepest, expected):
    assert grid_size(height, width, depth, min_deepest) == expected


def test_grid_size_rejects_bad_values():
    with pytest.raises(ValueError, match="-1"):
        grid_size(-1, 8, 3)
    with pytest.raises(ValueError, match="depth"):
        grid_size(8, 8, -2)


def test_crop_center_keeps_the_centre():
    x = torch.arange(2 * 3 * 10 * 9, dtype=torch.float32).reshape(2, 3, 10, 9)
    y = crop_center(x, 6, 5)
    assert y.shape == (2, 3, 6, 5)
    assert torch.equal(y, x[:, :, 2:8, 2:7])
    assert torch.equal(crop_center(x, 10, 9), x)
    with pytest.raises(ValueError, match="11x9"):
        crop_center(x, 11, 9)


def test_make_input_noise_is_seeded():
    a = make_input("noise", 32, 20, 18, torch.Generator().manual_seed(1))
    b = make_input("noise", 32, 20, 18, torch.Generator().manual_seed(1))
    c = make_input("noise", 32, 20, 18, torch.Generator().manual_seed(2))
    assert a.shape == (1, 32, 20, 18) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert 0.0 <= a.min() and a.max() <= 0.1
    assert a.std() > 0.01


def test_make_input_meshgrid_corners():
    z = make_input("meshgrid", 2, 5, 7, torch.Generator())
    assert z.shape == (1, 2, 5, 7)
    x, y = z[0]
    assert x[0, 0] == 0 and y[0, 0] == 0
    assert x[-1, -1] == 1 and y[-1, -1] == 1
    assert x[-1, 0] == 0 and y[-1, 0] == 1  # x grows along width, y along height
    assert torch.equal(x[0], torch.linspace(0, 1, 7))


@pytest.mark.parametrize("kind, channels, bad", [("perlin", 32, "'perlin'"), ("meshgrid", 3, "channels=3")])
def test_make_input_rejects_bad_kind_or_channels(kind, channels, bad):
    with pytest.raises(ValueError, match=re.escape(bad)):
        make_input(kind, channels, 8, 8, torch.Generator())


@pytest.mark.parametrize("field, value", [
    ("kind", "vgg"),
    ("upsample_mode", "bicubic"),
    ("downsample_mode", "lanczos"),
    ("pad", "replicate"),
    ("in_channels", 0),
    ("out_channels", -3),
    ("channels_down", (128, 0, 128, 128, 128)),
    ("channels_up", (128, 128, 128, 128)),
    ("channels_skip", (4, 4, -1, 4, 4)),
    ("channels_down", [128] * 5),
    ("filter_size_down", 4),
    ("filter_size_skip", 0),
    ("resnet_blocks", 0),
])
def test_bad_config_names_the_value(field, value):
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        NetConfig(**{field: value})


def test_skip_config_overrides_and_rejects_unknown_fields():
    assert skip_config() == NetConfig()
    assert skip_config(pad="zero").pad == "zero"
    with pytest.raises(ValueError, match="chanels_up"):
        skip_config(chanels_up=(8,))

from dataclasses import replace

import pytest
import torch

from pipeline.core.memory import FitTooLarge, GiB, available_bytes, check_fits, estimate_fit_bytes, estimate_fit_parts
from pipeline.core.nets import build_net, count_parameters, grid_size
from pipeline.core.presets import CPU_SMALL, get_preset

PAPER_NET = get_preset("denoise").net  # the paper's skip net
TINY_NET = get_preset("denoise", CPU_SMALL).net


def estimate(net, h, w, **kwargs):
    return estimate_fit_bytes(net, h, w, in_channels=32, out_channels=3, **kwargs)


@pytest.mark.parametrize("net, h, w", [(PAPER_NET, 256, 256), (TINY_NET, 100, 70)])
def test_the_size_dependent_part_grows_about_linearly_with_the_pixels(net, h, w):
    parts = estimate_fit_parts(net, h, w, in_channels=32, out_channels=3)
    const = parts["parameters"] + parts["overhead"]
    ratio = (estimate(net, 2 * h, 2 * w) - const) / (estimate(net, h, w) - const)
    assert 3 <= ratio <= 4.5, ratio


def test_bf16_needs_less_than_fp32():
    assert estimate(PAPER_NET, 512, 512, bf16=True) < estimate(PAPER_NET, 512, 512)


def test_the_paper_net_at_512_needs_a_few_gib():
    assert 1 * GiB < estimate(PAPER_NET, 512, 512) < 20 * GiB


def test_the_early_stopping_window_adds_exactly_its_ring_buffer():
    h, w, window = 123, 77, 25
    assert estimate(TINY_NET, h, w, early_stop_window=window) - estimate(TINY_NET, h, w) == window * 3 * h * w * 4


def test_backtracking_adds_a_snapshot_of_weights_and_adam_moments():
    parameters = count_parameters(build_net(replace(TINY_NET, in_channels=32, out_channels=3)))
    assert estimate(TINY_NET, 64, 64) - estimate(TINY_NET, 64, 64, backtrack=False) == 3 * 4 * parameters


def test_the_activation_estimate_covers_what_autograd_really_saves():
    net = build_net(TINY_NET).train()
    z = torch.rand(1, 32, *grid_size(64, 64, TINY_NET.depth, TINY_NET.min_deepest))
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(z)
    parts = estimate_fit_parts(TINY_NET, 64, 64, in_channels=32, out_channels=3)
    assert sum(saved.values()) <= parts["activations"] <= 3 * sum(saved.values())


@pytest.mark.parametrize("bad", [{"height": 0}, {"out_channels": 0}, {"early_stop_window": 0}])
def test_bad_sizes_are_refused_naming_the_value(bad):
    kwargs = {"height": 64, "width": 64, "in_channels": 32, "out_channels": 3} | bad
    with pytest.raises(ValueError, match=f"{next(iter(bad))} must be"):
        estimate_fit_bytes(TINY_NET, **kwargs)


def test_check_fits_names_the_size_and_says_tiling_is_off():
    check_fits(GiB, 2 * GiB, "4000x3000 image")  # fits: no error
    with pytest.raises(FitTooLarge, match="4000x3000 image.*12.0 GiB.*8.0 GiB.*tiling"):
        check_fits(12 * GiB, 8 * GiB, "4000x3000 image")


def test_available_bytes_on_the_cpu_and_an_unknown_device():
    assert available_bytes("cpu") > 0
    with pytest.raises(ValueError, match="meta"):
        available_bytes("meta")

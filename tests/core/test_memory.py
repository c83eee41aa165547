from dataclasses import replace

import pytest
import torch

from pipeline.core import memory
from pipeline.core.images import Picture
from pipeline.core.memory import (
    DETECTOR_PLANES,
    NOISE_PLANES,
    FitTooLarge,
    GiB,
    MiB,
    available_bytes,
    check_fits,
    choose_tile,
    estimate_fit_bytes,
    estimate_fit_parts,
    fit_budget,
    image_work_parts,
    memory_needed,
    resident_bytes,
)
from pipeline.core.nets import build_net, count_parameters, grid_size
from pipeline.core.options import Options
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


def test_resident_bytes_follows_this_process_and_counts_against_an_explicit_cpu_budget(monkeypatch):
    before = resident_bytes()
    block = torch.ones(64 * MiB // 4)  # 64 MiB, written
    assert before > 10 * MiB and resident_bytes() - before > 60 * MiB
    del block
    monkeypatch.setattr(memory, "resident_bytes", lambda: GiB)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 5 * GiB)
    assert fit_budget(Options(memory_budget_gb=3)) == 2 * GiB  # the process holds one of the three
    assert fit_budget(Options()) == 5 * GiB  # MemAvailable leaves the process out already


def test_the_whole_image_work_is_counted_term_by_term():
    scan = Picture(pixels=torch.empty(1, 3, 31, 37, device="meta"))
    plane = 31 * 37 * 4
    assert image_work_parts(scan, Options(task="archive", preset=CPU_SMALL)) == {
        "detect": DETECTOR_PLANES * plane, "noise": NOISE_PLANES * plane, "mask": plane,
        "accumulators": 4 * plane, "restarts": 0}
    sr = image_work_parts(scan, Options(task="sr", scale=2, restarts=3, preset=CPU_SMALL))
    assert sr["detect"] == sr["mask"] == 0
    assert sr["accumulators"] == 4 * 4 * plane and sr["restarts"] == 2 * 3 * 3 * 4 * plane


def test_a_12_mp_scan_under_4_gib_gets_as_few_tiles_as_fit_beside_the_whole_image_work(monkeypatch):
    from pipeline.core.tiles import largest_tile, tile_boxes

    monkeypatch.setattr(memory, "resident_bytes", lambda: 512 * MiB)
    scan = Picture(pixels=torch.empty(1, 3, 3000, 4000, device="meta"))
    options = Options(task="archive", preset=CPU_SMALL, iterations=3, memory_budget_gb=4)
    parts = image_work_parts(scan, options)
    room = 4 * GiB - 512 * MiB - parts["mask"] - parts["accumulators"]
    tile = choose_tile(scan, options)
    assert 256 < tile < 3000
    largest = largest_tile(lambda side: memory_needed(scan, options, side, side) <= room, tile, 3000)
    assert memory_needed(scan, options, tile, tile) <= room < memory_needed(scan, options, largest + 1, largest + 1)

    def count(side):
        return len(tile_boxes(3000, 4000, side, side // 8))

    assert count(tile) == count(largest) < count(tile - 1)  # as few tiles as the largest, each as small as can be
    assert parts["mask"] + parts["detect"] <= 4 * GiB - 512 * MiB  # the detection, before the tiles, fits too


def test_a_budget_the_process_has_used_up_is_refused_naming_both(monkeypatch):
    monkeypatch.setattr(memory, "resident_bytes", lambda: 3 * GiB)
    scan = Picture(pixels=torch.empty(1, 3, 300, 400, device="meta"))
    with pytest.raises(FitTooLarge, match=r"400x300 image .*-1\.00 GiB is left of the 2\.00 GiB budget "
                                          r"\(this process holds the rest\)"):
        choose_tile(scan, Options(preset=CPU_SMALL, memory_budget_gb=2))

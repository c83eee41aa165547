import math
from dataclasses import replace

import pytest
import torch

from pipeline.core.early_stop import EarlyStopConfig, MovingVariance
from pipeline.core.fit import FitConfig, FitDiverged, fit
from pipeline.core.nets import NET_VARIANTS, build_net, grid_size, make_input
from pipeline.core.operators import Denoise, Inpainting, SuperResolution, bernoulli_mask

TINY = NET_VARIANTS["tiny"]


def smooth_image(h: int, w: int) -> torch.Tensor:
    """A clean test image [1, 3, h, w] in [0, 1]: smooth gradients and a soft disc."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    disc = ((xx - 0.5) ** 2 + (yy - 0.45) ** 2 < 0.08).float()
    return torch.stack([0.2 + 0.6 * xx, 0.3 + 0.5 * yy * (1 - disc) + 0.1 * disc, 0.7 - 0.4 * disc])[None]


def run(operator, observation, config, *, h, w, seed=0, reference=None, net=TINY, **fit_options):
    grid = grid_size(h, w, net.depth)
    z = make_input("noise", 32, *grid, torch.Generator().manual_seed(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_net(net)
    return fit(model, z, operator, observation, config, reference=reference, seed=seed, **fit_options)


def mse(a, b):
    return (a - b).square().mean().item()


def test_denoising_fit_beats_the_noisy_input():
    h, w = 37, 31
    clean = smooth_image(h, w)
    noisy = Denoise(25).degrade(clean, torch.Generator().manual_seed(0))
    config = FitConfig(iterations=300, lr=0.01, reg_noise_std=1 / 30, ema=0.99, check_every=50)
    result = run(Denoise(25), noisy, config, h=h, w=w, reference=clean)
    assert result.image.shape == clean.shape
    assert mse(result.image, clean) < 0.5 * mse(noisy, clean)
    assert [e["iteration"] for e in result.history] == [50, 100, 150, 200, 250, 300]
    assert result.history[-1]["psnr_reference"] > result.history[0]["psnr_reference"]
    assert result.best_iteration == 300 and not result.stopped_early


def test_super_resolution_fit_beats_the_untrained_net():
    h, w = 36, 28  # high-res size; the observation is 9x7
    clean = smooth_image(h, w)
    op = SuperResolution(4)
    low = op.degrade(clean, torch.Generator())
    config = FitConfig(iterations=250, lr=0.01, reg_noise_std=0.03, check_every=50)
    start = run(op, low, replace(config, iterations=1), h=h, w=w)
    result = run(op, low, config, h=h, w=w)
    assert result.image.shape == (1, 3, h, w)
    assert mse(result.image, clean) < 0.3 * mse(start.image, clean)


def test_inpainting_fills_unknown_pixels():
    h, w = 33, 35
    clean = smooth_image(h, w)
    mask = bernoulli_mask(h, w, 0.5, torch.Generator().manual_seed(0))
    op = Inpainting(mask)
    observed = op.degrade(clean, torch.Generator())
    result = run(op, observed, FitConfig(iterations=300, lr=0.01, reg_noise_std=0.03, check_every=100), h=h, w=w)
    holes = mask[0, 0] == 0
    assert mse(result.image[:, :, holes], clean[:, :, holes]) < 0.3 * mse(observed[:, :, holes], clean[:, :, holes])


def test_same_seed_same_output_other_seed_other_output():
    h, w = 24, 20
    noisy = Denoise(25).degrade(smooth_image(h, w), torch.Generator().manual_seed(0))
    config = FitConfig(iterations=20, reg_noise_std=1 / 30, ema=0.99, check_every=10)
    a = run(Denoise(), noisy, config, h=h, w=w, seed=3)
    b = run(Denoise(), noisy, config, h=h, w=w, seed=3)
    c = run(Denoise(), noisy, config, h=h, w=w, seed=4)
    assert torch.equal(a.image, b.image)
    assert not torch.equal(a.image, c.image)


def test_backtracking_recovers_a_forced_divergence():
    h, w = 24, 20
    noisy = Denoise(25).degrade(smooth_image(h, w), torch.Generator().manual_seed(0))
    grid = grid_size(h, w, TINY.depth)
    z = make_input("noise", 32, *grid, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = build_net(TINY)
    # Sabotage: just before the 25th forward pass, blow the weights up to NaN.
    calls = {"n": 0}

    def sabotage(module, inputs):
        calls["n"] += 1
        if calls["n"] == 25:
            with torch.no_grad():
                for p in net.parameters():
                    p.fill_(float("nan"))

    net.register_forward_pre_hook(sabotage)
    config = FitConfig(iterations=60, lr=0.01, backtrack=True, check_every=10)
    result = fit(net, z, Denoise(), noisy, config)
    assert result.backtracks >= 1
    assert torch.isfinite(result.image).all()
    assert all(math.isfinite(p.sum().item()) for p in net.parameters())
    assert math.isfinite(result.history[-1]["loss"])


def test_without_backtracking_a_divergence_is_an_error_not_a_nan_image():
    h, w = 24, 20
    noisy = Denoise(25).degrade(smooth_image(h, w), torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = build_net(TINY)

    def sabotage(module, inputs):
        for p in net.parameters():
            p.data.fill_(float("nan"))

    net.register_forward_pre_hook(sabotage)
    z = make_input("noise", 32, *grid_size(h, w, TINY.depth), torch.Generator().manual_seed(0))
    with pytest.raises(FitDiverged, match="iteration 10"):
        fit(net, z, Denoise(), noisy, FitConfig(iterations=40, check_every=10))


def test_early_stopping_stops_a_noisy_fit_before_its_budget():
    h, w = 32, 32
    noisy = Denoise(50).degrade(smooth_image(h, w), torch.Generator().manual_seed(0))
    config = FitConfig(iterations=3000, lr=0.01, reg_noise_std=1 / 30, check_every=10,
                       early_stop=EarlyStopConfig(window=20, patience=60))
    result = run(Denoise(), noisy, config, h=h, w=w)
    assert result.stopped_early
    assert result.iterations < 3000
    assert result.best_iteration <= result.iterations - 60


def test_a_dry_run_detector_runs_the_budget_and_returns_what_stopping_would_have():
    h, w = 32, 32
    noisy = Denoise(50).degrade(smooth_image(h, w), torch.Generator().manual_seed(0))
    detector = EarlyStopConfig(window=20, patience=60)
    config = FitConfig(iterations=3000, lr=0.01, reg_noise_std=1 / 30, check_every=10, early_stop=detector)
    stopped = run(Denoise(), noisy, config, h=h, w=w)
    budget = stopped.iterations + 40
    dry_config = replace(config, iterations=budget, early_stop=replace(detector, dry_run=True))
    dry = run(Denoise(), noisy, dry_config, h=h, w=w)
    assert dry.iterations == budget and dry.stopped_early  # ran on; the detector fired
    assert dry.best_iteration == stopped.best_iteration
    assert torch.equal(dry.image, stopped.image)
    assert all("variance" in e for e in dry.history[2:])


def test_moving_variance_finds_the_minimum_of_a_synthetic_sequence():
    # Outputs that first converge (shrinking steps) then drift (growing steps).
    stopper = MovingVariance(EarlyStopConfig(window=5, patience=10))
    x = torch.zeros(1, 1, 4, 4)
    for i in range(1, 200):
        step = abs(i - 50) * 1e-3 + 1e-4
        x = x + step * (1 if i % 2 else -1)
        stopper.update(x, x.clone(), i)
        if stopper.should_stop():
            break
    assert 45 <= int(stopper.best_iteration) <= 57
    assert i < 199


def test_late_iterates_are_averaged_over_exactly_the_last_n_iterations():
    # The same seeded trajectory run for 7 and 8 iterations gives the outputs of iterations 7 and 8;
    # averaging the last 2 of an 8-iteration run gives their mean.
    h, w = 16, 16
    clean = smooth_image(h, w)
    noisy = Denoise(25).degrade(clean, torch.Generator().manual_seed(0))
    config = FitConfig(iterations=8, lr=0.01, reg_noise_std=1 / 30, check_every=4)
    seventh, eighth = (run(Denoise(), noisy, replace(config, iterations=k), h=h, w=w).image for k in (7, 8))
    averaged = run(Denoise(), noisy, replace(config, average_last=2), h=h, w=w).image
    assert not torch.allclose(seventh, eighth, atol=1e-4)
    torch.testing.assert_close(averaged, ((seventh + eighth) / 2).clamp(0, 1), atol=1e-5, rtol=0)


def test_dip_tv_gives_a_smoother_output_than_plain_dip_from_the_same_start():
    from pipeline.core.baselines import mean_total_variation

    h, w = 32, 32
    clean = smooth_image(h, w)
    noisy = Denoise(25).degrade(clean, torch.Generator().manual_seed(0))
    config = FitConfig(iterations=150, lr=0.01, check_every=50)
    plain = run(Denoise(), noisy, config, h=h, w=w).image
    smooth = run(Denoise(), noisy, replace(config, tv_weight=0.5), h=h, w=w).image
    assert mean_total_variation(smooth).item() < 0.8 * mean_total_variation(plain).item()
    assert mse(smooth, clean) < mse(noisy, clean)


@pytest.mark.parametrize("field,value", [("iterations", 0), ("lr", 0), ("reg_noise_std", -1), ("ema", 1.0),
                                         ("tv_weight", -0.1), ("average_last", -1)])
def test_bad_fit_config_is_named(field, value):
    with pytest.raises(ValueError, match=field):
        FitConfig(**{field: value})

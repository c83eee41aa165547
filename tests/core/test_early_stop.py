import pytest
import torch

from pipeline.core.early_stop import EarlyStopConfig, MovingVariance
from pipeline.core.fit import FitConfig, fit
from pipeline.core.nets import NET_VARIANTS, build_net, grid_size, make_input
from pipeline.core.operators import Denoise


def feed(detector: MovingVariance, curve, every: int = 1) -> int | None:
    """Observe curve[k] at iteration (k + 1) * every, the candidate being the iteration itself;
    the iteration at which the detector fired (None: it did not)."""
    for k, variance in enumerate(curve):
        iteration = (k + 1) * every
        detector.observe(torch.tensor([float(variance)]), torch.tensor([[float(iteration)]]), iteration)
        if detector.should_stop():
            return iteration
    return None


def v_curve(n: int, low_at: int, early_dip: bool = False) -> list[float]:
    """Variance per iteration 1..n: a V with its minimum at low_at; optionally very low at first
    (the network's first outputs barely move)."""
    curve = [0.01 + abs(i - low_at) / n for i in range(1, n + 1)]
    if early_dip:
        curve[:5] = [1e-4] * 5
    return curve


def test_start_ignores_the_minimum_before_the_fit_has_begun():
    curve = v_curve(400, low_at=200, early_dip=True)
    plain = MovingVariance(EarlyStopConfig(patience=50))
    assert feed(plain, curve) == 51  # fired on the early dip
    assert int(plain.best_iteration) <= 5

    started = MovingVariance(EarlyStopConfig(patience=50, start=20))
    assert feed(started, curve) == 250
    assert int(started.best_iteration) == 200 == int(started.best_image[0, 0])


def test_a_fit_that_ends_before_start_returns_its_last_output():
    h = w = 24
    noisy = Denoise(50).degrade(torch.full((1, 3, h, w), 0.5), torch.Generator().manual_seed(0))
    net_config = NET_VARIANTS["tiny"]
    z = make_input("noise", 32, *grid_size(h, w, net_config.depth), torch.Generator().manual_seed(0))
    results = []
    for detector in (None, EarlyStopConfig(window=5, patience=10, start=1000)):
        torch.manual_seed(0)
        config = FitConfig(iterations=40, check_every=10, early_stop=detector)
        results.append(fit(build_net(net_config), z, Denoise(), noisy, config))
    assert torch.equal(results[1].image, results[0].image)
    assert results[1].best_iteration == 40 and not results[1].stopped_early


def test_tolerance_stops_a_creeping_variance_and_keeps_the_lowest_output():
    # 1 % lower per iteration for 300 iterations, then 0.01 % lower per iteration, forever.
    creeping = [0.99 ** min(i, 300) * 0.9999 ** max(i - 300, 0) for i in range(1, 2001)]
    exact = MovingVariance(EarlyStopConfig(patience=100))
    assert feed(exact, creeping) is None  # each creep restarts the patience

    tolerant = MovingVariance(EarlyStopConfig(patience=100, tolerance=0.05))
    fired = feed(tolerant, creeping)
    assert fired is not None and 300 < fired <= 420
    assert int(tolerant.counted_at[0]) == fired - 100 <= 320  # the last 5 % drop, at the end of the steep part
    assert int(tolerant.best_iteration) == fired  # the output kept is still the lowest one


def test_patience_counts_iterations_so_a_coarse_replay_fires_where_the_live_detector_does():
    curve = v_curve(1000, low_at=420)
    live = MovingVariance(EarlyStopConfig(patience=200, tolerance=0.01))
    live_fired = feed(live, curve)
    coarse = MovingVariance(EarlyStopConfig(patience=200, tolerance=0.01))
    coarse_fired = feed(coarse, curve[9::10], every=10)
    assert live_fired is not None and coarse_fired is not None
    assert abs(coarse_fired - live_fired) <= 10
    assert abs(int(coarse.best_iteration) - int(live.best_iteration)) <= 10


def test_each_image_of_a_pack_has_its_own_detector():
    detector = MovingVariance(EarlyStopConfig(patience=30))
    fired = [None, None]
    for i in range(1, 301):
        # Minima at 50 and 200; the first image's variance falls lower still after it fired.
        variance = torch.tensor([abs(i - 50) + 1.0 if i < 150 else 0.5, abs(i - 200) + 1.0])
        detector.observe(variance, torch.full((2, 1), float(i)), i)
        for g, stopped in enumerate(detector.stopped().tolist()):
            fired[g] = fired[g] or (i if stopped else None)
    assert fired == [80, 230]
    assert detector.best_iteration.tolist() == [50, 200]  # frozen once fired: the later low ignored


@pytest.mark.parametrize("field,value", [("window", 1), ("patience", 0), ("start", -1), ("tolerance", 1.0)])
def test_bad_detector_settings_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        EarlyStopConfig(**{field: value})

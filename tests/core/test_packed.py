"""Packing: same-size images fitted together give what each gives alone (up to rounding)."""

from dataclasses import replace

import pytest
import torch

from pipeline.core.early_stop import EarlyStopConfig, MovingVariance
from pipeline.core.images import Picture
from pipeline.core.metrics import psnr
from pipeline.core.nets import NET_VARIANTS, build_net
from pipeline.core.options import Options
from pipeline.core.packed import PackedNets, pack_key, restore_many
from pipeline.core.restore import restore
from pipeline.core.synthetic import synthesize
from tests.core.test_fit import smooth_image


def clean(seed: int, h=24, w=20) -> Picture:
    x = smooth_image(h, w).roll(seed * 3, dims=-1)
    return Picture(pixels=x, alpha=None, bit_depth=8)


def items(spec: str, n=3, iterations=30) -> list[dict]:
    out = []
    for k in range(n):
        s = synthesize(clean(k), spec, seed=k)
        options = Options(task=s.task, preset="cpu-small", iterations=iterations, seed=10 + k, scale=s.scale)
        out.append({"observed": s.observed, "reference": s.reference, "mask": s.mask, "options": options})
    return out


@pytest.mark.parametrize("spec", ["noise:25", "mask:bernoulli:0.5", "downsample:2"])
def test_a_packed_fit_gives_each_image_its_own_fit(spec):
    batch = items(spec)
    packed = restore_many(batch)
    for item, together in zip(batch, packed, strict=True):
        alone = restore(**item)
        assert psnr(together.picture.pixels, alone.picture.pixels) > 38  # rounding (another seed: ~20 dB)
        assert together.metrics["psnr"] == pytest.approx(alone.metrics["psnr"], abs=0.2)
        assert together.fit.iterations == alone.fit.iterations == 30
    # Different images (and seeds) give different outputs: nothing leaks between the packed nets.
    assert psnr(packed[0].picture.pixels, packed[1].picture.pixels) < 40


def test_packed_nets_run_each_net_on_its_own_input():
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(build_net(NET_VARIANTS["tiny"]))
    z = torch.randn(2, 32, 16, 16)
    expected = torch.cat([net.train()(z[n : n + 1]) for n, net in enumerate(nets)])
    packed = PackedNets(nets)
    assert torch.allclose(packed(z), expected, atol=1e-5)
    weights = packed.net(1)
    assert set(weights) == {name for name, _ in nets[1].named_parameters()}
    assert all(torch.equal(weights[name], p.detach()) for name, p in nets[1].named_parameters())


def test_pack_key_and_refusals():
    a, b = items("noise:25", n=2)
    assert pack_key(a["observed"], a["options"]) == pack_key(b["observed"], b["options"])
    other = synthesize(clean(0, 32, 20), "noise:25", seed=0)
    assert pack_key(other.observed, a["options"]) != pack_key(a["observed"], a["options"])
    assert pack_key(a["observed"], Options(task="invert")) is None
    with pytest.raises(ValueError, match="restore_many needs images of one packable kind"):
        restore_many([a, {**b, "observed": other.observed, "reference": other.reference}])
    with pytest.raises(ValueError, match="one architecture"):
        PackedNets([build_net(NET_VARIANTS["tiny"]), build_net(NET_VARIANTS["skip"])])


def test_early_stopping_in_a_pack_freezes_each_image_at_its_own_minimum():
    # Two output sequences whose variance minima come at different iterations: the packed
    # detector must pick, for each, what a detector of its own picks.
    def sequence(turn):
        x, out = torch.zeros(1, 1, 4, 4), []
        for i in range(1, 300):
            x = x + (abs(i - turn) * 1e-3 + 1e-4) * (1 if i % 2 else -1)
            out.append(x.clone())
        return out

    first, second = sequence(40), sequence(120)
    config = EarlyStopConfig(window=5, patience=20)
    alone = []
    for seq in (first, second):
        stopper = MovingVariance(config)
        for i, x in enumerate(seq, 1):
            stopper.update(x, x, i)
            if stopper.should_stop():
                break
        alone.append((int(stopper.best_iteration[0]), stopper.best_image.clone()))
    together = MovingVariance(config)
    for i, (a, b) in enumerate(zip(first, second, strict=True), 1):
        x = torch.cat([a, b])
        together.update(x, x, i)
        if together.should_stop():
            break
    assert together.best_iteration.tolist() == [alone[0][0], alone[1][0]]
    assert alone[0][0] < alone[1][0]
    assert torch.equal(together.best_image[0:1], alone[0][1]) and torch.equal(together.best_image[1:2], alone[1][1])


def test_a_pack_gets_the_time_limit_of_each_of_its_images(monkeypatch):
    import pipeline.core.packed as packed_module
    from pipeline.core.fit import FitTimeout

    limits = []

    def fit_many(*args, time_limit_s=None, **kwargs):
        limits.append(time_limit_s)
        raise FitTimeout("ran past its time limit")

    monkeypatch.setattr(packed_module, "fit_many", fit_many)
    batch = [{**item, "options": replace(item["options"], time_limit_s=2.5)} for item in items("noise:25")]
    with pytest.raises(FitTimeout):
        restore_many(batch)
    assert limits == [7.5]  # three images

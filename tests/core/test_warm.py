"""Warm starts: weights carried from one fit to the next (neighbour and shrink tiles, a collection)."""

from dataclasses import replace

import pytest
import torch

from pipeline.core.collection import learn_initial
from pipeline.core.engine import align_channels
from pipeline.core.images import Picture
from pipeline.core.nets import build_net
from pipeline.core.options import Options
from pipeline.core.prepare import prepare
from pipeline.core.presets import CPU_SMALL
from pipeline.core.restore import restore, restore_tiled
from pipeline.core.tiles import tile_boxes
from pipeline.core.warm import (
    SHRINK,
    Start,
    chained_start,
    load_initial,
    load_weights,
    save_initial,
    serpentine,
    weights_of,
)
from tests.core.test_fit import smooth_image


def noisy_picture(h=32, w=32, sigma=20, seed=0):
    clean = smooth_image(h, w)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed)) * sigma / 255
    return Picture(pixels=(clean + noise).clamp(0, 1)), Picture(pixels=clean)


@pytest.mark.parametrize("size", [(192, 192, 64), (100, 250, 48), (64, 64, 64)])
def test_serpentine_visits_every_tile_once_each_next_to_the_last(size):
    h, w, tile = size
    boxes = tile_boxes(h, w, tile, tile // 8)
    order = serpentine(boxes)
    assert sorted(order) == list(range(len(boxes)))
    for a, b in zip(order, order[1:], strict=False):
        (ta, la, ha, wa), (tb, lb, hb, wb) = boxes[a], boxes[b]
        assert ta < tb + hb and tb < ta + ha and la < lb + wb and lb < la + wa  # they overlap


def test_weights_round_trip_into_a_fresh_network_and_padded_convolutions_are_cut_back():
    options = Options(task="denoise", preset=CPU_SMALL)
    observed, _ = noisy_picture()
    job = prepare(observed, options)
    with torch.no_grad():
        for p in job.net.parameters():
            p.add_(0.01)
    padded = align_channels(build_net(replace(options.resolve().net, in_channels=32, out_channels=3)), 8)
    other = prepare(observed, replace(options, seed=5)).net
    load_weights(other, weights_of(job.net))
    assert all(torch.equal(a, b) for a, b in zip(job.net.parameters(), other.parameters(), strict=True))
    cut_back = weights_of(padded)  # a padded net's weights load into a plain one
    load_weights(prepare(observed, options).net, cut_back)
    with pytest.raises(ValueError, match="do not fit this network"):
        load_weights(prepare(observed, Options(task="denoise")).net, cut_back)  # the paper's net


def test_a_fit_started_from_a_fitted_network_starts_where_that_fit_stopped():
    observed, clean = noisy_picture()
    options = Options(task="denoise", preset=CPU_SMALL, iterations=300, early_stop=False)  # history every 50
    cold = restore(observed, options, reference=clean, keep_weights=True)
    warm = restore(observed, replace(options, seed=1), reference=clean, start=Start(cold.weights, input_seed=0))
    cold_first, cold_last = cold.fit.history[0]["psnr_reference"], cold.fit.history[-1]["psnr_reference"]
    warm_first = warm.fit.history[0]["psnr_reference"]
    assert warm_first > cold_first + 5 and warm_first > cold_last - 1.5
    # (it does not get on to a better image sooner: benchmarks/iterations_to_quality.py measured warm
    # starts slower to quality than cold ones, so only the mechanism is asserted here)
    # the fitted weights belong with their input: from another input they start as far as a cold fit
    other = restore(observed, replace(options, seed=1), reference=clean, start=Start(cold.weights))
    assert other.fit.history[0]["psnr_reference"] < warm_first - 5


@pytest.mark.parametrize("kind", ["neighbour", "shrink"])
def test_tiles_are_chained_in_serpentine_order(kind):
    observed, _ = noisy_picture(48, 80)
    options = Options(task="denoise", preset=CPU_SMALL, iterations=20, warm_start=kind)
    calls = []  # per tile fitted: (seed, the start's input seed and share, the marker of the weights it started from)

    def fit_one(tile, tile_options, *, start=None, keep_weights=False, **kwargs):
        assert keep_weights
        calls.append((tile_options.seed, start and start.input_seed, start and start.share,
                      start and float(start.weights["marker"])))
        own = None if start is None else replace(start, weights={n: v for n, v in start.weights.items()
                                                                 if n != "marker"})
        result = restore(tile, replace(tile_options, warm_start="none"), start=own, keep_weights=True, **kwargs)
        result.weights["marker"] = torch.tensor(float(tile_options.seed))  # which tile these weights are
        return result

    tiled = restore_tiled(observed, options, tile=32, overlap=4, restore_one=fit_one)
    order = serpentine(tile_boxes(48, 80, 32, 4))
    assert [seed for seed, _, _, _ in calls] == [options.seed + k for k in order]
    assert calls[0][1:] == (None, None, None)
    # neighbour: the first tile's input and the weights alone; shrink: its own input, SHRINK of them
    expected = (options.seed + order[0], 1.0) if kind == "neighbour" else (None, SHRINK)
    for (_, input_seed, share, marker), (before, _, _, _) in zip(calls[1:], calls, strict=False):
        assert (input_seed, share) == expected and marker == before  # the tile fitted just before
    assert tiled.metrics["warm_start"] == kind


def test_shrink_starts_from_a_share_of_the_fitted_weights_and_the_rest_of_its_own():
    observed, _ = noisy_picture()
    options = Options(task="denoise", preset=CPU_SMALL)
    fitted = {n: v + 1.0 for n, v in weights_of(prepare(observed, replace(options, seed=7)).net).items()}
    own = weights_of(prepare(observed, replace(options, seed=3)).net)  # the tile's own random network
    mixed = prepare(observed, replace(options, seed=3), start=Start(fitted, share=SHRINK)).net
    for name, value in weights_of(mixed).items():
        torch.testing.assert_close(value, SHRINK * fitted[name] + (1 - SHRINK) * own[name])
    with pytest.raises(ValueError, match="share of fitted weights must be in"):
        load_weights(mixed, fitted, share=0.0)
    with pytest.raises(ValueError, match="does not chain tiles"):
        chained_start(fitted, "collection", 0)


def test_a_warm_start_stops_early_unless_told_not_to():
    assert Options(task="denoise", warm_start="neighbour").resolve().fit.early_stop is not None
    assert Options(task="denoise", warm_start="neighbour", early_stop=False).resolve().fit.early_stop is None
    assert Options(task="denoise").resolve().fit.early_stop is None
    assert Options(task="denoise").hash_dict() == Options(task="denoise", warm_start="none").hash_dict()
    assert "warm_start" not in Options(task="denoise").hash_dict()  # results hashed before it still count
    assert Options(task="denoise", warm_start="neighbour").hash_dict()["warm_start"] == "neighbour"


def test_collection_weights_are_learned_saved_and_checked_when_loaded(tmp_path):
    observed = [noisy_picture(32, 32, seed=s)[0] for s in range(2)]
    options = Options(task="denoise", preset=CPU_SMALL)
    learned = learn_initial(observed, options, rounds=1, iterations=10)
    assert learned.keys() == weights_of(prepare(observed[0], options).net).keys()
    assert all(torch.equal(learned[k], v) for k, v in learn_initial(observed, options, rounds=1,
                                                                     iterations=10).items())  # seeded
    seeded = weights_of(prepare(observed[0], options).net)
    assert any(not torch.equal(learned[k], seeded[k]) for k in learned)  # it moved
    data = save_initial({3: learned}, {"preset": CPU_SMALL, "collection": "c", "input_seed": 0})
    start = load_initial(data, preset=CPU_SMALL, channels=3)
    assert all(torch.equal(start.weights[k], learned[k]) for k in learned) and start.input_seed == 0
    with pytest.raises(ValueError, match="learned for preset 'cpu-small', not 'denoise'"):
        load_initial(data, preset="denoise", channels=3)
    with pytest.raises(ValueError, match="not for this image's 1"):
        load_initial(data, preset=CPU_SMALL, channels=1)
    with pytest.raises(ValueError, match="not a dip warm-start file"):
        load_initial(b"not torch", preset=CPU_SMALL, channels=3)
    path = tmp_path / "c.pt"
    path.write_bytes(data)
    restored = restore(observed[1], Options(task="denoise", preset=CPU_SMALL, iterations=10,
                                            warm_start="collection", warm_weights=str(path)))
    assert restored.summary()["warm_start"] == "collection"
    with pytest.raises(ValueError, match="needs its weights"):
        restore(observed[1], Options(task="denoise", preset=CPU_SMALL, iterations=10, warm_start="collection"))

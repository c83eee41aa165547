"""Packing: same-size images fitted together give what each gives alone (up to rounding)."""

from dataclasses import replace

import pytest
import torch

from pipeline import results, storage
from pipeline.early_stop import EarlyStopConfig, MovingVariance
from pipeline.images import Picture
from pipeline.metrics import psnr
from pipeline.nets import NET_VARIANTS, build_net
from pipeline.packing import PackedNets, pack_key, restore_many
from pipeline.restore import Options, restore
from pipeline.synthetic import synthesize
from tests.test_batch import dip_run, png_bytes
from tests.test_fit import smooth_image
from tests.test_manifest import write_manifest


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
    for item, together in zip(batch, packed):
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
    for i, (a, b) in enumerate(zip(first, second), 1):
        x = torch.cat([a, b])
        together.update(x, x, i)
        if together.should_stop():
            break
    assert together.best_iteration.tolist() == [alone[0][0], alone[1][0]]
    assert alone[0][0] < alone[1][0]
    assert torch.equal(together.best_image[0:1], alone[0][1]) and torch.equal(together.best_image[1:2], alone[1][1])


def test_the_batch_job_packs_same_size_images(ray_local, tmp_path):
    prefix = str(tmp_path / "data")
    rows = []
    for k, (w, h) in enumerate([(24, 20), (24, 20), (24, 20), (32, 24)]):
        url = storage.join(prefix, f"{k}.png")
        storage.write_bytes(url, png_bytes(w, h, seed=k))
        rows.append({"image_id": f"i{k}", "uri": url, "degradation": "noise:25"})
    storage.write_bytes(storage.join(prefix, "bad.png"), b"not an image")
    rows.append({"image_id": "bad", "uri": storage.join(prefix, "bad.png")})
    manifest = write_manifest(storage.join(prefix, "manifest.parquet"), rows)
    output = str(tmp_path / "out")
    outcome = dip_run(manifest, output, "--pack", "8", "--workers", "1")
    assert outcome.exit_code == 1, outcome.output  # the bad image fails, alone
    table = {row["image_id"]: row for row in results.read_table(output).to_pylist()}
    assert table["bad"]["status"] == "error"
    assert {k: table[k]["status"] for k in ("i0", "i1", "i2", "i3")} == dict.fromkeys(("i0", "i1", "i2", "i3"), "ok")
    assert [table[k]["packed"] for k in ("i0", "i1", "i2", "i3")] == [3, 3, 3, 1]


def test_with_packing_the_plan_puts_same_size_rows_next_to_each_other(tmp_path):
    import pyarrow.parquet as pq

    from pipeline.batch import RunConfig, write_plan

    sizes = [(64, 48), (32, 32), (64, 48), (32, 32), (64, 48), (16, 16)]
    rows = [{"image_id": f"i{k}", "uri": str(tmp_path / f"{k}.png"), "width": w, "height": h}
            for k, (w, h) in enumerate(sizes)]
    manifest = write_manifest(str(tmp_path / "manifest.parquet"), rows)
    config = RunConfig(manifest=manifest, output=str(tmp_path / "out"), defaults=Options(preset="cpu-small"))

    def planned_sizes(pack):
        plan, summary = write_plan(replace(config, pack=pack), f"run{pack}")
        assert summary.total == len(rows)
        by_id = {row["image_id"]: row for row in rows}
        return [(by_id[r["image_id"]]["width"], by_id[r["image_id"]]["height"]) for r in pq.read_table(plan).to_pylist()]

    assert planned_sizes(1) == sizes  # manifest order without packing
    grouped = planned_sizes(8)
    assert sorted(grouped) == sorted(sizes)
    assert grouped == sorted(grouped, key=lambda s: (s[1], s[0]))  # one configuration: by height, width


def test_a_pack_gets_the_time_limit_of_each_of_its_images(monkeypatch):
    import pipeline.packing as packing
    from pipeline.fit import FitTimeout

    limits = []

    def fit_many(*args, time_limit_s=None, **kwargs):
        limits.append(time_limit_s)
        raise FitTimeout("ran past its time limit")

    monkeypatch.setattr(packing, "fit_many", fit_many)
    batch = [{**item, "options": replace(item["options"], time_limit_s=2.5)} for item in items("noise:25")]
    with pytest.raises(FitTimeout):
        restore_many(batch)
    assert limits == [7.5]  # three images


@pytest.mark.parametrize("failure", ["timeout", "other"])
def test_a_failed_pack_is_refitted_alone_unless_it_ran_out_of_time(monkeypatch, tmp_path, failure):
    import pyarrow.parquet as pq

    import pipeline.packing as packing
    import pipeline.restore
    from pipeline.batch import RunConfig, write_plan
    from pipeline.fit import FitTimeout
    from pipeline.restorer import Restorer

    rows = []
    for k in range(3):
        url = storage.join(str(tmp_path / "in"), f"{k}.png")
        storage.write_bytes(url, png_bytes(24, 20, seed=k))
        rows.append({"image_id": f"i{k}", "uri": url, "degradation": "noise:25"})
    config = RunConfig(manifest=write_manifest(str(tmp_path / "manifest.parquet"), rows), output=str(tmp_path / "out"),
                       defaults=Options(preset="cpu-small", iterations=3), pack=3)
    plan, _ = write_plan(config, "run")

    def broken_pack(group):
        raise FitTimeout("ran past its time limit") if failure == "timeout" else RuntimeError("pack broke")

    alone = []
    real_restore = pipeline.restore.restore
    monkeypatch.setattr(packing, "restore_many", broken_pack)
    monkeypatch.setattr(pipeline.restore, "restore", lambda **kw: alone.append(1) or real_restore(**kw))
    out = Restorer(config.output, "run", {}, max_pixels=10**6, threads=1)(pq.read_table(plan).to_pydict())
    if failure == "timeout":
        assert alone == [] and out["status"] == ["error"] * 3
        assert all(e.startswith("FitTimeout") for e in out["error"])
    else:
        assert alone == [1, 1, 1] and out["status"] == ["ok"] * 3
    assert len(results.read_table(config.output)) == 3  # one result row per image either way

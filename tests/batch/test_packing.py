"""Packing through the batch job: same-size rows planned together, packed fits, a failed pack."""

from dataclasses import replace

import pytest

from pipeline import storage
from pipeline.batch.job import results
from pipeline.core.options import Options
from tests.batch.test_job import dip_run, png_bytes
from tests.batch.test_manifest import write_manifest


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

    from pipeline.batch.job import RunConfig, write_plan

    sizes = [(64, 48), (32, 32), (64, 48), (32, 32), (64, 48), (16, 16)]
    rows = [{"image_id": f"i{k}", "uri": str(tmp_path / f"{k}.png"), "width": w, "height": h}
            for k, (w, h) in enumerate(sizes)]
    manifest = write_manifest(str(tmp_path / "manifest.parquet"), rows)
    config = RunConfig(manifest=manifest, output=str(tmp_path / "out"), defaults=Options(preset="cpu-small"))

    def planned_sizes(pack):
        plan, summary = write_plan(replace(config, pack=pack), f"run{pack}")
        assert summary.total == len(rows)
        by_id = {row["image_id"]: row for row in rows}
        planned = [by_id[r["image_id"]] for r in pq.read_table(plan).to_pylist()]
        return [(row["width"], row["height"]) for row in planned]

    assert planned_sizes(1) == sizes  # manifest order without packing
    grouped = planned_sizes(8)
    assert sorted(grouped) == sorted(sizes)
    assert grouped == sorted(grouped, key=lambda s: (s[1], s[0]))  # one configuration: by height, width


@pytest.mark.parametrize("failure", ["timeout", "other"])
def test_a_failed_pack_is_refitted_alone_unless_it_ran_out_of_time(monkeypatch, tmp_path, failure):
    import pyarrow.parquet as pq

    import pipeline.core.packed as packed_module
    import pipeline.core.restore as restore_module
    from pipeline.batch.actor import FitActor
    from pipeline.batch.job import RunConfig, write_plan
    from pipeline.core.fit import FitTimeout

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
    real_restore = restore_module.restore
    monkeypatch.setattr(packed_module, "restore_many", broken_pack)
    monkeypatch.setattr(restore_module, "restore", lambda **kw: alone.append(1) or real_restore(**kw))
    out = FitActor(config.output, "run", {}, max_pixels=10**6, threads=1)(pq.read_table(plan).to_pydict())
    if failure == "timeout":
        assert alone == [] and out["status"] == ["error"] * 3
        assert all(e.startswith("FitTimeout") for e in out["error"])
    else:
        assert alone == [1, 1, 1] and out["status"] == ["ok"] * 3
    assert len(results.read_table(config.output)) == 3  # one result row per image either way

"""The results table: shards, the done index, compaction (local disk and the real S3 server)."""

import datetime as dt
import json

import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.batch import results
from pipeline.batch.compact import compact
from pipeline.batch.job import RunConfig, block_rows, pool_size, write_plan
from pipeline.core.options import Options
from tests.batch.test_manifest import write_manifest

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def row(image_id, attempt=1, status="ok", config="h", minutes=0, **more):
    return {"image_id": image_id, "config_hash": config, "attempt": attempt, "status": status,
            "finished_at": T0 + dt.timedelta(minutes=minutes), "history": "[]", **more}


def names(output, options=None):
    return [url.rsplit("/", 1)[-1] for url, _ in storage.list_dir(storage.join(output, "results"), options)]


def test_a_writer_writes_a_shard_per_n_rows_and_when_its_oldest_row_is_old_enough(tmp_path, monkeypatch):
    output = str(tmp_path)
    shards = results.ShardWriter(output, "run", rows=3, seconds=60, writer_id="w1")
    urls = [shards.add(row(f"i{i}", box=f"B{i}")) for i in range(7)]
    assert names(output) == ["shard-run-w1-000000.parquet", "shard-run-w1-000001.parquet"]  # 6 rows; 1 buffered
    assert urls == [shards.key(0)] * 3 + [shards.key(1)] * 3 + [shards.key(2)]
    clock = [1000.0]
    monkeypatch.setattr(results.time, "monotonic", lambda: clock[0])
    shards.oldest = clock[0]
    clock[0] += 61
    shards.add(row("late"))  # the buffered row is older than 60 s: the shard goes out with 2 rows
    assert len(names(output)) == 3
    shard = pq.read_table(shards.key(2))
    assert shard["image_id"].to_pylist() == ["i6", "late"] and shard.column_names[-2:] == ["history", "box"]
    assert shard.schema.field("finished_at").type == results.COLUMNS["finished_at"]
    shards.flush()  # nothing buffered: nothing written
    assert len(names(output)) == 3
    with pytest.raises(ValueError, match="0 rows"):
        results.ShardWriter(output, "run", rows=0)


def test_the_done_index_reads_shards_and_the_per_image_layout(tmp_path):
    output = str(tmp_path)
    shards = results.ShardWriter(output, "run")
    for r in (row("a", 1, "error"), row("a", 2), row("b", 1, "error"), row("c", 1, config="other")):
        shards.add(r)
    shards.flush()
    legacy = storage.join(output, "results", "d", "h-0003-ok.parquet")  # the earlier layout: known by its name
    storage.write_bytes(legacy, results.table_bytes(results.rows_table([row("d", 3)])))
    done = results.done_index(output)
    assert sorted(done.to_pylist(), key=lambda r: r["image_id"]) == [
        {"image_id": "a", "config_hash": "h", "attempt": 2, "ok": True},
        {"image_id": "b", "config_hash": "h", "attempt": 1, "ok": False},
        {"image_id": "c", "config_hash": "other", "attempt": 1, "ok": True},
        {"image_id": "d", "config_hash": "h", "attempt": 3, "ok": True}]
    assert results.lookup(done, ["b", "a", "c", "zz", "d"], ["h", "h", "h", "h", "h"]) == (
        [False, True, False, False, True], [1, 2, 0, 0, 3])
    assert results.done_index(str(tmp_path / "none")).num_rows == 0


def test_compaction_keeps_the_latest_and_the_latest_ok_attempt_and_moves_the_rest(tmp_path):
    output = str(tmp_path)
    first = results.ShardWriter(output, "run1", rows=2)
    for r in (row("a", 1, "error"), row("a", 2, minutes=1), row("a", 3, "error", minutes=2), row("b", 1),
              row("c", 1, box="B7")):
        first.add(r)
    first.flush()
    second = results.ShardWriter(output, "run2")
    second.add(row("b", 1))  # a retried task's copy of a row
    second.add(row("c", 1, config="new", minutes=5))
    second.flush()
    done = results.done_index(output).sort_by("image_id").to_pylist()

    summary = compact(output)
    assert (summary.inputs, summary.rows, summary.kept, summary.superseded) == (4, 7, 5, 2)
    assert names(output) == [summary.written[0].rsplit("/", 1)[-1]] and names(output)[0].startswith("compacted-")
    kept = sorted((r["image_id"], r["config_hash"], r["attempt"], r["status"]) for r in results.read_table(output)
                  .to_pylist())
    assert kept == [("a", "h", 2, "ok"), ("a", "h", 3, "error"), ("b", "h", 1, "ok"), ("c", "h", 1, "ok"),
                    ("c", "new", 1, "ok")]
    boxes = {(r["image_id"], r["config_hash"]): r["box"] for r in results.read_table(output).to_pylist()}
    assert boxes[("c", "h")] == "B7" and boxes[("c", "new")] is None  # the manifest's own columns kept
    assert results.done_index(output).sort_by("image_id").to_pylist() == done  # resume sees the same
    moved = pq.read_table(summary.written[1]).to_pylist()
    assert "/attempts/" in summary.written[1]
    assert sorted((r["image_id"], r["attempt"]) for r in moved) == [("a", 1), ("b", 1)]
    assert compact(output).written == ()  # one compacted file: nothing to fold


def test_compaction_at_a_runs_end_folds_only_shards(tmp_path):
    output = str(tmp_path)
    for run in ("run1", "run2"):
        shards = results.ShardWriter(output, run)
        shards.add(row(f"x-{run}"))
        shards.flush()
        compact(output, full=False)
    assert [n.split("-")[0] for n in names(output)] == ["compacted", "compacted"]
    assert compact(output).kept == 2 and len(names(output)) == 1


def test_a_writers_unflushed_rows_are_fitted_again_on_the_rerun(tmp_path):
    """A killed actor loses its buffered rows: their images (restored or not) are planned again."""
    manifest = write_manifest(str(tmp_path / "m.parquet"), [{"image_id": f"i{i}", "uri": f"/x/i{i}.png"}
                                                            for i in range(5)])
    config = RunConfig(manifest=manifest, output=str(tmp_path / "out"), defaults=Options(preset="cpu-small"))
    plan, _ = write_plan(config, "run1")
    jobs = pq.read_table(plan).to_pylist()
    shards = results.ShardWriter(config.output, "run1", rows=3)
    for job in jobs:
        storage.write_bytes(storage.join(config.output, "restored", f"{job['image_id']}.png"), b"png")
        shards.add(row(job["image_id"], config=job["config_hash"]))
    del shards  # killed: two rows never written
    plan, summary = write_plan(config, "run2")
    again = pq.read_table(plan).to_pylist()
    assert (summary.total, summary.skipped) == (5, 3)
    assert [(j["image_id"], j["attempt"]) for j in again] == [("i3", 1), ("i4", 1)]


def test_the_pool_is_sized_to_the_cluster_and_blocks_hold_many_rows():
    config = RunConfig(manifest="m", output="o", cpus_per_fit=2)
    assert pool_size(config, todo=10**6, gpus=0, resources={"CPU": 16}) == 8
    assert pool_size(config, todo=10**6, gpus=0.5, resources={"CPU": 16, "GPU": 4}) == 8
    assert pool_size(config, todo=3, gpus=0, resources={"CPU": 16}) == 3
    assert pool_size(RunConfig(manifest="m", output="o", max_workers=5), 100, 1, {"GPU": 64}) == 5
    assert block_rows(10**6, workers=100, pack=1) == 64
    assert block_rows(10**6, workers=100, pack=8) == 64
    assert block_rows(3, workers=2, pack=1) == 1  # small runs: one image per block, spread over the pool
    assert block_rows(1000, workers=10, pack=4) == 24


def test_shards_done_index_and_compaction_on_s3(s3_server, s3_bucket):
    options = s3_server.storage_options
    output = f"{s3_bucket}/out"
    shards = results.ShardWriter(output, "run", options, rows=2)
    for r in (row("a", 1, "error"), row("a", 2), row("b", 1, history=json.dumps([{"iteration": 1}]))):
        shards.add(r)
    shards.flush()
    assert len(names(output, options)) == 2
    done = results.done_index(output, options).sort_by("image_id").to_pylist()
    assert [(d["image_id"], d["attempt"], d["ok"]) for d in done] == [("a", 2, True), ("b", 1, True)]
    summary = compact(output, options)
    assert (summary.kept, summary.superseded) == (2, 1)
    assert [n.split("-")[0] for n in names(output, options)] == ["compacted"]
    assert results.done_index(output, options).sort_by("image_id").to_pylist() == done
    rows = results.read_table(output, options).to_pylist()
    assert sorted((r["image_id"], r["attempt"]) for r in rows) == [("a", 2), ("b", 1)]


def test_a_second_pass_over_changed_files_is_refused():
    import pyarrow as pa

    keys = pa.chunked_array([pa.array(["a", "b"]), pa.array(["c"])])
    results.check_order(pa.table({"image_id": ["b", "c"]}), keys, 1, "out")  # same rows, other chunking
    with pytest.raises(RuntimeError, match="changed while read"):
        results.check_order(pa.table({"image_id": ["c", "b"]}), keys, 1, "out")

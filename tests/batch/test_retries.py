"""Retries after a lost worker or node, without a cluster: the claims that count a run's starts of a fit
and refuse a poison image, the shards a lost node never writes, the pass that fits their images
again, the watch on the head, and the options behind them. On a real cluster: test_cluster_faults."""

import socket
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline import storage
from pipeline.batch import claims, head, job, results
from pipeline.batch.actor import FitActor
from pipeline.batch.job import RunConfig, RunSummary, pool_size, replan, wait_for_shards, write_plan
from pipeline.cli.main import main
from pipeline.core.options import Options
from tests.batch.test_job import png_bytes
from tests.batch.test_manifest import write_manifest


def planned(tmp_path, count=2) -> tuple[RunConfig, str]:
    rows = []
    for k in range(count):
        url = storage.join(str(tmp_path / "in"), f"{k}.png")
        storage.write_bytes(url, png_bytes(16, 16, seed=k))
        rows.append({"image_id": f"i{k}", "uri": url})
    config = RunConfig(manifest=write_manifest(str(tmp_path / "manifest.parquet"), rows), output=str(tmp_path / "out"),
                       defaults=Options(preset="cpu-small", iterations=2, device="cpu"), max_fit_attempts=2)
    plan, _ = write_plan(config, "run1")
    return config, plan


def test_each_start_is_claimed_and_a_poison_image_is_refused_at_the_limit(tmp_path):
    config, plan = planned(tmp_path, count=1)
    batch = pq.read_table(plan).to_pydict()

    def start(run_id="run1", lost=True):
        """One start of the image's fit, as Ray's retry on a new actor after the last one's worker died
        (``lost``: before its row was stored)."""
        actor = FitActor(config.output, run_id, {}, max_pixels=10**6, threads=1,
                         max_fit_attempts=config.max_fit_attempts)
        out = actor(batch)
        if lost:
            actor.shards.buffer.clear()  # a killed worker's buffered rows are gone
        actor.shards.flush()
        return out

    assert start()["fit_starts"] == [1]
    out = start()
    assert (out["status"], out["fit_starts"]) == (["ok"], [2])
    out = start()  # a third start, past --max-fit-attempts 2: refused, named, not fitted
    assert out["status"] == ["error"] and out["fit_starts"] == [2]
    assert out["error"][0] == ("FitLost: i0: its fit was started 2 times in this run and its worker died each time "
                               "(node lost or process killed); not started again (--max-fit-attempts 2)")
    written = claims.read(config.output, "run1")
    assert len(written) == 2 and {c["image_id"] for c in written} == {"i0"}
    assert start("run2", lost=False)["fit_starts"] == [1]  # a rerun counts its own starts only
    claims.remove(config.output, "run1")
    assert claims.read(config.output, "run1") == [] and len(claims.read(config.output, "run2")) == 1
    claims.remove(config.output, "run2")
    assert not (tmp_path / "out" / "claims").exists()  # nothing left behind on a local disk


def test_a_batch_started_again_fits_only_the_images_whose_rows_were_lost(tmp_path, monkeypatch):
    import pipeline.core.restore as restore_module

    config, plan = planned(tmp_path, count=3)
    batch = pq.read_table(plan).to_pydict()
    first = FitActor(config.output, "run1", {}, max_pixels=10**6, threads=1, shard_rows=1)
    stored = first({k: v[:2] for k, v in batch.items()})  # i0 and i1 fitted, their rows stored
    jobs = pq.read_table(plan).to_pylist()
    claims.claim(config.output, "run1", "i2", jobs[2]["config_hash"], writer=first.shards.writer_id)  # then lost
    fitted = []
    real_restore = restore_module.restore
    monkeypatch.setattr(restore_module, "restore", lambda **kw: fitted.append(1) or real_restore(**kw))
    again = FitActor(config.output, "run1", {}, max_pixels=10**6, threads=1, shard_rows=1)(batch)  # Ray's retry
    assert fitted == [1]  # only i2
    assert again["shard"][:2] == stored["shard"] and again["psnr"][:2] == stored["psnr"]  # the stored rows stand
    assert again["fit_starts"] == [1, 1, 2] and again["status"] == ["ok"] * 3
    assert sorted(r["image_id"] for r in results.read_table(config.output).to_pylist()) == ["i0", "i1", "i2"]


def test_a_lost_nodes_shards_are_not_waited_for(tmp_path, monkeypatch):
    output = str(tmp_path / "out")
    config = RunConfig(manifest="m", output=output)
    writer = results.ShardWriter(output, "run1")
    stored = writer.add({"image_id": "a", "status": "ok"})
    writer.flush()
    never = results.ShardWriter(output, "run1").add({"image_id": "b", "status": "ok"})  # buffered, node killed
    clock = time.monotonic()
    assert wait_for_shards(config, {stored: "n1", never: "n2"}, alive=lambda: {"n1"}) == {never}
    assert time.monotonic() - clock < 5  # not SHARD_WAIT_S: node n2 is gone
    monkeypatch.setattr(job, "SHARD_WAIT_S", 0.5)  # a live node's shard is waited for, up to SHARD_WAIT_S
    clock = time.monotonic()
    assert wait_for_shards(config, {never: "n2"}, alive=lambda: {"n2"}) == {never}
    assert time.monotonic() - clock >= 0.5


def test_the_next_pass_plans_the_images_whose_rows_were_lost(tmp_path):
    config, plan = planned(tmp_path, count=3)
    jobs = pq.read_table(plan).to_pylist()
    writer = results.ShardWriter(config.output, "run1")
    writer.add({"image_id": "i0", "status": "ok", "config_hash": jobs[0]["config_hash"], "attempt": 1})
    writer.add({"image_id": "i1", "status": "error", "config_hash": jobs[1]["config_hash"], "attempt": 1})
    writer.flush()  # i2's row went with its node
    url, rows = replan(config, "run1", plan, 2)
    assert url.endswith("runs/run1.plan-2.parquet") and rows == 1
    assert [(r["image_id"], r["attempt"]) for r in pq.read_table(url).to_pylist()] == [("i2", 1)]


def test_lost_rows_are_uncounted_from_the_summary():
    summary = RunSummary(run_id="r")
    for image, status, shard, starts in (("a", "ok", "s1", 1), ("b", "ok", "s2", 2), ("c", "error", "s2", 1)):
        summary.add({"image_id": image, "status": status, "shard": shard, "fit_starts": starts})
    assert (summary.ok, summary.failed, summary.retried) == (2, 1, 1)
    summary.retract(Counter(ok=1, error=1, retried=1), {"s2"})
    assert (summary.ok, summary.failed, summary.retried) == (1, 0, 0)
    assert [row["image_id"] for row in summary.rows] == ["a"]


def test_a_head_that_stops_answering_raises_head_lost_in_the_main_thread():
    listener = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    with head.watch(address, grace_s=0.3, every_s=0.05):
        time.sleep(0.5)  # the head answers: nothing happens
    with pytest.raises(head.HeadLost, match=f"the Ray head at {address} has not answered for 0 s"):
        with head.watch(address, grace_s=0.3, every_s=0.05):
            listener.close()
            time.sleep(10)  # interrupted by HeadLost
    assert not head.reachable("127.0.0.1", int(address.rsplit(":", 1)[1]))


def test_fits_can_need_custom_resources_and_the_pool_counts_them():
    config = RunConfig(manifest="m", output="o", resources_per_fit={"fit_slot": 1})
    assert pool_size(config, todo=100, gpus=0, resources={"CPU": 5, "fit_slot": 2}) == 2
    assert pool_size(RunConfig(manifest="m", output="o", resources_per_fit={"fit_slot": 0.5}), 100, 0,
                     {"CPU": 5, "fit_slot": 2}) == 4
    assert config.public()["resources_per_fit"] == {"fit_slot": 1}  # recorded in the run record
    for bad, message in (({"CPU": 1}, "'CPU' is not a custom resource"), ({"fit_slot": 0}, "above 0, got 0"),
                         ({"fit_slot": "1"}, "above 0, got '1'")):
        with pytest.raises(ValueError, match=message):
            RunConfig(manifest="m", output="o", resources_per_fit=bad)
    with pytest.raises(ValueError, match="max_fit_attempts must be at least 1, got 0"):
        RunConfig(manifest="m", output="o", max_fit_attempts=0)


@pytest.mark.parametrize(("value", "message"), [("fit_slot", "not valid JSON"), ('{"GPU": 1}', "'GPU' is not a")])
def test_dip_run_refuses_bad_resources_per_fit_before_anything_runs(tmp_path, value, message):
    outcome = CliRunner().invoke(main, ["run", "--manifest", str(tmp_path / "m.parquet"), "--output",
                                        str(tmp_path / "out"), "--resources-per-fit", value])
    assert outcome.exit_code == 2 and message in outcome.output, outcome.output

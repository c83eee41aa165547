"""What a run must never do, tried as a careless user and a hostile manifest would: reach outside its
output, lose good rows to one bad one, hang on an input that never ends, share its output with a
second run, or drop a page or a catalogue column's type without a word."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
from click.testing import CliRunner

from pipeline import storage
from pipeline.batch import lease, results
from pipeline.batch.manifest import resolve
from pipeline.cli.main import main
from pipeline.cli.options import EXIT_IMAGES_FAILED, EXIT_NOT_STARTED, EXIT_OK
from pipeline.core.options import Options
from tests.batch.test_job import dip_run, png_bytes
from tests.batch.test_manifest import write_manifest

ROOT = Path(__file__).resolve().parents[2]


def snapshot(folder: Path, leave_out: Path) -> dict[str, tuple[int, float]]:
    """Every file and folder under ``folder`` but ``leave_out``: (size, mtime) by path."""
    found = {}
    for path in folder.rglob("*"):
        if path == leave_out or leave_out in path.parents:
            continue
        stat = path.lstat()
        found[str(path)] = (stat.st_size, stat.st_mtime)
    return found


def good_rows(folder: Path) -> list[dict]:
    rows = []
    for i in (1, 2):
        path = folder / f"good{i}.png"
        path.write_bytes(png_bytes(24, 20, seed=i))
        rows.append({"image_id": f"good{i}", "uri": str(path)})
    return rows


# -----------------------------------------------------------------------------
# 1. A run id is a name; every path a run touches stays under its output


@pytest.mark.parametrize("run_id", ["../../victim", "/tmp/victim", "a/b", "..", ".hidden"])
def test_a_run_id_that_is_a_path_is_refused_and_nothing_outside_is_touched(tmp_path, run_id):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    manifest = write_manifest(str(tmp_path / "m.parquet"), good_rows(tmp_path))
    before = snapshot(tmp_path, tmp_path / "out")
    outcome = dip_run(manifest, str(tmp_path / "work" / "out"), "--run-id", run_id)
    assert outcome.exit_code == EXIT_NOT_STARTED, outcome.output
    assert "run id" in outcome.output and repr(run_id) in outcome.output
    assert snapshot(tmp_path, tmp_path / "out") == before
    assert (victim / "keep.txt").read_text() == "mine"


def test_paths_under_an_output_refuse_dotdot_absolute_parts_and_links_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert storage.under(str(out), "runs", "r1.json") == f"{out}/runs/r1.json"
    for parts in (("..", "x"), ("runs", "../../x"), ("/etc",), ("a/b",), ("",)):
        with pytest.raises(ValueError, match="not one name under the output"):
            storage.under(str(out), *parts)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "runs").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="outside the output"):
        storage.under(str(out), "runs", "r1.json")
    (tmp_path / "alias").symlink_to(out)  # the output itself through a link is fine
    assert storage.under(str(tmp_path / "alias"), "results", "x.parquet").endswith("results/x.parquet")


def test_a_run_whose_output_folder_links_outside_writes_nothing_there(ray_local, tmp_path):
    manifest = write_manifest(str(tmp_path / "m.parquet"), good_rows(tmp_path))
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "restored").symlink_to(elsewhere)
    outcome = dip_run(manifest, str(out))
    assert outcome.exit_code == EXIT_NOT_STARTED, outcome.output
    assert "outside the output" in outcome.output
    assert list(elsewhere.iterdir()) == []


# -----------------------------------------------------------------------------
# 2. One row's value cannot lose the others


def test_a_poisonous_row_among_good_ones_becomes_an_error_row_and_every_good_row_is_stored(tmp_path):
    output = str(tmp_path / "out")
    shards = results.ShardWriter(output, "run1", rows=10)
    base = {"status": "ok", "config_hash": "h", "attempt": 1, "run_id": "run1"}
    shards.add({**base, "image_id": "a", "seed": 1})
    shards.add({**base, "image_id": "poison", "seed": 2**63, "iterations": "many"})
    shards.add({**base, "image_id": "b", "seed": 2})
    shards.flush()
    rows = {row["image_id"]: row for row in results.read_table(output).to_pylist()}
    assert set(rows) == {"a", "poison", "b"}
    assert rows["a"]["status"] == rows["b"]["status"] == "ok"
    bad = rows["poison"]
    assert bad["status"] == "error" and bad["seed"] is None and bad["iterations"] is None
    assert "'seed': 9223372036854775808" in bad["error"] and "'iterations': 'many'" in bad["error"]


def test_a_flush_that_fails_at_exit_says_which_rows_were_not_stored(tmp_path, capsys):
    blocker = tmp_path / "out"
    blocker.write_text("a file where the output folder should be")
    shards = results.ShardWriter(str(blocker), "run1")
    shards.add({"image_id": "a", "status": "ok"})
    shards.flush_at_exit()
    assert "1 result row(s) of run run1 could not be stored (a)" in capsys.readouterr().err


@pytest.mark.parametrize("row,fragment", [
    ({"params": json.dumps({"seed": 2**63})}, "9223372036854775808"),
    ({"seed": 2**64 - 1}, "18446744073709551615"),
    ({"seed": "123"}, "seed must be an integer, got '123'"),
    ({"seed": -1}, "seed has a bad value -1"),
    ({"scale": "4", "task": "sr"}, "scale must be an integer"),
])
def test_seeds_and_scales_that_cannot_be_stored_are_refused_naming_them(row, fragment):
    with pytest.raises(ValueError, match=fragment):
        resolve({"image_id": "a", "uri": "x.png", **row}, Options())


# -----------------------------------------------------------------------------
# 3. A folder the run writes that takes nothing is refused before Ray starts


def test_an_unwritable_results_folder_is_refused_in_one_line_before_anything_runs(tmp_path):
    manifest = write_manifest(str(tmp_path / "m.parquet"), good_rows(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "results").write_text("a file where the results folder goes")
    started = time.monotonic()
    outcome = dip_run(manifest, str(out))
    assert outcome.exit_code == EXIT_NOT_STARTED, outcome.output
    assert f"cannot write under {out}/results" in outcome.output
    assert len(outcome.output.strip().splitlines()) == 1 and time.monotonic() - started < 10


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder of mode 500")
def test_a_results_folder_of_mode_500_is_refused(tmp_path):
    manifest = write_manifest(str(tmp_path / "m.parquet"), good_rows(tmp_path))
    (tmp_path / "out" / "results").mkdir(parents=True)
    (tmp_path / "out" / "results").chmod(0o500)
    outcome = dip_run(manifest, str(tmp_path / "out"))
    assert outcome.exit_code == EXIT_NOT_STARTED and "results" in outcome.output


# -----------------------------------------------------------------------------
# 4. and 5. Inputs that never end, pages, and formats, beside two good images


def two_page_tiff(path: Path) -> None:
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.full((20, 24, 3), 40, np.uint8), photometric="rgb")
        tif.write(np.full((20, 24, 3), 200, np.uint8), photometric="rgb")


def test_every_input_case_beside_two_good_images_stores_the_good_rows_and_touches_nothing_outside(
        ray_local, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = good_rows(data)
    os.mkfifo(data / "fifo.png")
    two_page_tiff(data / "pages.tif")
    tifffile.imwrite(data / "gray-alpha.tif", np.random.default_rng(0).integers(0, 65535, (20, 24, 2), np.uint16),
                     photometric="minisblack", extrasamples=["unassalpha"])
    rows += [{"image_id": "fifo", "uri": str(data / "fifo.png")},
             {"image_id": "dev-zero", "uri": "/dev/zero"},
             {"image_id": "pages", "uri": str(data / "pages.tif")},
             {"image_id": "page-2", "uri": str(data / "pages.tif"), "page": 1},
             {"image_id": "gray-alpha", "uri": str(data / "gray-alpha.tif")},
             {"image_id": "scanned", "uri": rows[0]["uri"], "scanned_at": dt.datetime(1931, 5, 2, 10, 30),
              "collection": "box-7"}]
    manifest = write_manifest(str(tmp_path / "m.parquet"), rows)
    before = snapshot(tmp_path, tmp_path / "out")
    outcome = dip_run(manifest, str(tmp_path / "out"))
    assert outcome.exit_code == EXIT_IMAGES_FAILED, outcome.output
    table = results.read_table(str(tmp_path / "out"))
    by_id = {row["image_id"]: row for row in table.to_pylist()}
    assert {k for k, row in by_id.items() if row["status"] == "ok"} == {"good1", "good2", "page-2", "gray-alpha",
                                                                         "scanned"}
    assert "is a FIFO" in by_id["fifo"]["error"] and "character device" in by_id["dev-zero"]["error"]
    assert "2 pages" in by_id["pages"]["error"] and "--page" in by_id["pages"]["error"]
    assert table.schema.field("scanned_at").type == pa.timestamp("us")  # carried with its type
    assert by_id["scanned"]["scanned_at"] == dt.datetime(1931, 5, 2, 10, 30)
    assert by_id["scanned"]["collection"] == "box-7"  # an archive's own column, like any other
    assert snapshot(tmp_path, tmp_path / "out") == before


def test_reads_are_bounded_in_size_and_time(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(b"x" * 1000)
    with pytest.raises(ValueError, match="1000 bytes, more than the 999"):
        storage.read_bytes(str(path), max_bytes=999)
    assert len(storage.read_bytes(str(path), max_bytes=1000)) == 1000
    with pytest.raises(storage.ReadTooSlow, match="still reading after the time limit"):
        storage.read_bytes(str(path), deadline=time.monotonic() - 1)
    fs = storage.filesystem("memory://bounded/x")[0]
    fs.pipe_file("/bounded/x", b"y" * 50)
    with pytest.raises(ValueError, match="more than 49 bytes"):
        storage.read_bytes("memory://bounded/x", max_bytes=49)


# -----------------------------------------------------------------------------
# 6. dip manifest makes ids dip run takes


def test_dip_manifest_makes_unique_ids_for_same_named_files_and_dip_run_takes_them(ray_local, tmp_path, monkeypatch):
    for folder in ("x", "y"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / "p.png").write_bytes(png_bytes(seed=len(folder)))
    monkeypatch.chdir(tmp_path)  # a relative glob: the listing names files by absolute path
    outcome = CliRunner().invoke(main, ["manifest", "data/*/*.png", "-o", "m.parquet"])
    assert outcome.exit_code == 0, outcome.output
    assert sorted(pq.read_table(tmp_path / "m.parquet")["image_id"].to_pylist()) == ["x__p", "y__p"]
    assert dip_run(str(tmp_path / "m.parquet"), str(tmp_path / "out")).exit_code == EXIT_OK


# -----------------------------------------------------------------------------
# 7. A catalogue column whose type changed between runs


def test_a_catalogue_column_whose_type_changed_is_refused_up_front_and_earlier_mixes_still_read(ray_local, tmp_path):
    rows = good_rows(tmp_path)
    first = write_manifest(str(tmp_path / "m1.parquet"), [{**r, "year": 1931} for r in rows])
    assert dip_run(first, str(tmp_path / "out")).exit_code == EXIT_OK
    second = write_manifest(str(tmp_path / "m2.parquet"), [{**r, "image_id": r["image_id"] + "-b", "year": "c. 1931"}
                                                           for r in rows])
    outcome = dip_run(second, str(tmp_path / "out"))
    assert outcome.exit_code == EXIT_NOT_STARTED, outcome.output
    assert "column 'year' is string in the manifest but int64 in the results" in outcome.output
    # an output that holds both already (written before this check) reads, compacts and reports
    shards = results.ShardWriter(str(tmp_path / "out"), "older", rows=10)
    shards.add({"image_id": "z", "status": "ok", "config_hash": "h", "attempt": 1, "year": "c. 1900"})
    shards.flush()
    table = results.read_table(str(tmp_path / "out"))
    assert table.schema.field("year").type == pa.string()
    assert sorted(table["year"].to_pylist()) == ["1931", "1931", "c. 1900"]
    assert CliRunner().invoke(main, ["compact", str(tmp_path / "out")]).exit_code == 0
    assert sorted(results.read_table(str(tmp_path / "out"))["year"].to_pylist()) == ["1931", "1931", "c. 1900"]


# -----------------------------------------------------------------------------
# 8. One run per output at a time


def start_run(manifest: str, output: str, iterations: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline.cli.main", "run", "--manifest", manifest, "--output", output,
               "--preset", "cpu-small", "--iterations", str(iterations), "--device", "cpu", "--quiet",
               "--num-cpus", "2"]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.integration  # the first run, a subprocess, starts a local Ray
def test_a_second_run_or_a_compaction_on_a_busy_output_is_refused_naming_the_holder(tmp_path):
    manifest = write_manifest(str(tmp_path / "m.parquet"), good_rows(tmp_path))
    out = tmp_path / "out"
    first = start_run(manifest, str(out), iterations=400)
    try:
        deadline = time.monotonic() + 60
        while not (out / lease.NAME).exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read().decode()[-2000:]
            time.sleep(0.1)
        second = dip_run(manifest, str(out))
        assert second.exit_code == EXIT_NOT_STARTED, second.output
        assert "is in use by dip run (run " in second.output and f"pid {first.pid}" in second.output
        compaction = CliRunner().invoke(main, ["compact", str(out)])
        assert compaction.exit_code != 0 and "in use by dip run" in compaction.output
        text, _ = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == EXIT_OK, text.decode()[-2000:]
    assert not (out / lease.NAME).exists()
    rows = results.read_table(str(out)).to_pylist()
    assert sorted(r["image_id"] for r in rows) == ["good1", "good2"]  # each fitted once


def write_lease(output: Path, **fields) -> None:
    record = {"holder": "r0", "command": "dip run", "host": socket.gethostname(), "pid": os.getpid(), "nonce": "n",
              "started_at": "2026-01-01T00:00:00+00:00", "renewed_at": dt.datetime.now(dt.timezone.utc).isoformat(),
              **fields}
    output.mkdir(parents=True, exist_ok=True)
    (output / lease.NAME).write_text(json.dumps(record))


def test_a_stale_lease_is_broken_only_when_asked_and_a_dead_holder_here_is_taken_over(tmp_path):
    out = tmp_path / "out"
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)).isoformat()
    write_lease(out, host="another-host", renewed_at=old)
    with pytest.raises(lease.LeaseHeld, match="stale lease.*--break-lease"):
        lease.acquire(str(out), holder="r1", command="dip run")
    with lease.held(str(out), holder="r1", command="dip run", break_stale=True) as taken:
        assert json.loads((out / lease.NAME).read_text())["nonce"] == taken.record["nonce"]
    assert not (out / lease.NAME).exists()
    write_lease(out, host="another-host")  # renewed just now, elsewhere: alive
    with pytest.raises(lease.LeaseHeld, match="in use by dip run.*another-host"):
        lease.acquire(str(out), holder="r1", command="dip run", break_stale=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lease(out, pid=dead.pid)  # this host, its process gone (a SIGKILLed driver)
    with lease.held(str(out), holder="r2", command="dip run") as taken:
        assert taken.record["holder"] == "r2"


def test_the_lease_is_exclusive_on_s3_and_renewed_while_held(s3_server, s3_bucket):
    options = s3_server.storage_options
    output = f"{s3_bucket}/out"
    held = lease.acquire(output, options, holder="r1", command="dip run", heartbeat_s=0.2)
    try:
        other = subprocess.run(  # another process is refused
            [sys.executable, "-c", "import json, sys; from pipeline.batch import lease; "
             f"lease.acquire({output!r}, json.loads(sys.argv[1]), holder='r2', command='dip compact')",
             json.dumps(options)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert other.returncode != 0 and "LeaseHeld" in other.stderr and "in use by dip run" in other.stderr
        first = json.loads(storage.read_bytes(f"{output}/{lease.NAME}", options))["renewed_at"]
        time.sleep(1.0)
        assert json.loads(storage.read_bytes(f"{output}/{lease.NAME}", options))["renewed_at"] > first
    finally:
        lease.release(held)
    assert not storage.exists(f"{output}/{lease.NAME}", options)

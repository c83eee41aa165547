"""Fault injection against real local Ray and the real S3 server: a fit worker killed, the
driver killed and the command rerun, the S3 server down for seconds. In every case the run
ends with exactly one ok row per image and nothing lost. The runs write a shard per row (``--shard-rows 1``), so
that results appear as fits end; a killed writer's buffered rows are fitted again, tested in test_results."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from pipeline import storage
from pipeline.batch import results
from tests.batch.test_job import png_bytes
from tests.batch.test_manifest import write_manifest

pytestmark = pytest.mark.integration  # each test's dip run starts a local Ray of its own
ROOT = Path(__file__).resolve().parents[2]
IMAGES = 4


def dataset(prefix: str, options=None) -> str:
    rows = []
    for i in range(IMAGES):
        uri = storage.join(prefix, "in", f"img{i}.png")
        storage.write_bytes(uri, png_bytes(48, 48, seed=i), options)
        rows.append({"image_id": f"img{i}", "uri": uri, "degradation": "noise:25"})
    return write_manifest(storage.join(prefix, "manifest.parquet"), rows, options)


def start_run(manifest: str, output: str, options=None, iterations: int = 150) -> subprocess.Popen:
    """`dip run` in a process group of its own, with its own local Ray."""
    command = [sys.executable, "-m", "pipeline.cli.main", "run", "--manifest", manifest, "--output", output,
               "--preset", "cpu-small", "--iterations", str(iterations), "--device", "cpu", "--quiet",
               "--num-cpus", "2", "--shard-rows", "1", "--storage-options", json.dumps(options or {})]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the driver and every process it started (its local Ray too), by PID."""
    try:
        family = [process.pid, *(p.pid for p in psutil.Process(process.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        family = [process.pid]
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)


def wait_for_results(output: str, count: int, process: subprocess.Popen, options=None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(result_urls(output, options)) >= count:
            return
        if process.poll() is not None:
            pytest.fail("the run ended early:\n" + process.stdout.read().decode()[-3000:])
        time.sleep(0.2)
    kill_tree(process)
    pytest.fail(f"no {count} results within {timeout} s")


def result_urls(output: str, options=None) -> list[str]:
    prefix = storage.join(output, "results")
    return sorted(storage.list_files(prefix, options)) if storage.exists(prefix, options) else []


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process)
        pytest.fail("the run did not finish")
    text = out.decode()
    assert process.returncode == 0, text[-3000:]
    return text


def assert_one_ok_row_per_image(output: str, options=None) -> None:
    rows = results.read_table(output, options).to_pylist()
    ok = Counter(r["image_id"] for r in rows if r["status"] == "ok")
    assert ok == {f"img{i}": 1 for i in range(IMAGES)}, rows
    restored = sorted(u.rsplit("/", 1)[-1] for u in storage.list_files(storage.join(output, "restored"), options))
    assert restored == [f"img{i}.png" for i in range(IMAGES)]
    assert storage.exists(storage.join(output, "_SUCCESS"), options)


def test_a_fit_worker_killed_mid_run_is_retried(tmp_path):
    manifest = dataset(str(tmp_path / "data"))
    output = str(tmp_path / "out")
    process = start_run(manifest, output)
    wait_for_results(output, 1, process)
    workers = [p for p in psutil.Process(process.pid).children(recursive=True)
               if "FitActor" in " ".join(p.cmdline())]
    assert workers, "no fit worker found among the run's processes"
    workers[0].send_signal(signal.SIGKILL)
    finish(process)
    assert_one_ok_row_per_image(output)


def test_a_killed_driver_is_resumed_by_rerunning_the_command(tmp_path):
    manifest = dataset(str(tmp_path / "data"))
    output = str(tmp_path / "out")
    process = start_run(manifest, output)
    wait_for_results(output, 1, process)
    kill_tree(process)
    rows_before = results.read_table(output).to_pylist()
    done_before = {r["image_id"] for r in rows_before if r["status"] == "ok"}
    assert 1 <= len(done_before) < IMAGES
    assert not storage.exists(storage.join(output, "_SUCCESS"))

    finish(start_run(manifest, output))
    runs_before = {r["run_id"] for r in rows_before}
    fitted_again = {r["image_id"] for r in results.read_table(output).to_pylist() if r["run_id"] not in runs_before}
    assert fitted_again == {f"img{i}" for i in range(IMAGES)} - done_before  # only the unfinished ones
    assert_one_ok_row_per_image(output)


def test_the_s3_server_down_for_seconds_mid_run_loses_nothing(s3_server, s3_bucket):
    options = s3_server.storage_options
    manifest = dataset(f"{s3_bucket}/data", options)
    output = f"{s3_bucket}/out"
    process = start_run(manifest, output, options)
    wait_for_results(output, 1, process, options)
    s3_server.stop()
    time.sleep(6)
    s3_server.start()
    finish(process)
    assert_one_ok_row_per_image(output, options)

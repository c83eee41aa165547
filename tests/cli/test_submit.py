"""`dip submit` against a real Ray head (Ray Jobs API, token authentication on)."""

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.batch import results
from pipeline.cli.main import main
from pipeline.cli.submit import make_submission_id as submission_id
from tests.batch.test_job import make_dataset


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` on loopback with the dashboard (Jobs API); stopped by its
    process group at the end (not the ray CLI's stop command, which would stop other clusters too)."""
    tmp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={tmp}/ray",
               "--disable-usage-stats",
               # ports of their own, so that this head does not clash with the session's local Ray
               # (the dashboard agent's default listen port is fixed: 52365)
               *(f"--{name}={free_port()}" for name in (
                   "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                   "metrics-export-port", "ray-client-server-port"))]
    log = open(tmp / "ray.log", "wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
        except urllib.error.HTTPError:
            break  # it answers (401 without the token): the dashboard is up
        except OSError:
            time.sleep(1)
            continue
        break
    else:
        os.killpg(process.pid, signal.SIGTERM)
        pytest.fail("ray head did not come up:\n" + (tmp / "ray.log").read_text()[-3000:])
    yield address
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    log.close()
    shutil.rmtree(tmp, ignore_errors=True)


def test_submission_id_is_stable_for_a_run_and_a_day():
    args = ["--manifest", "s3://a/m.parquet", "--output", "s3://a/out"]
    day = dt.date(2026, 11, 27)
    assert submission_id(args, day) == submission_id(list(args), day)
    assert submission_id(args, day) != submission_id(args, dt.date(2026, 11, 28))
    assert submission_id(args, day) != submission_id([*args, "--iterations", "5"], day)


def test_credentials_are_refused_in_submitted_storage_options():
    outcome = CliRunner().invoke(main, ["submit", "--address", "http://127.0.0.1:1", "--manifest", "m", "--output",
                                        "o", "--storage-options", json.dumps({"secret": "hunter2"})])
    assert outcome.exit_code == 2
    assert "credentials would be visible" in outcome.output and "hunter2" not in outcome.output


def test_submit_runs_the_batch_as_a_ray_job_once(ray_head, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    manifest = make_dataset(str(tmp_path / "data"))
    output = str(tmp_path / "out")
    args = ["submit", "--address", ray_head, "--manifest", manifest, "--output", output, "--preset", "cpu-small",
            "--iterations", "3", "--device", "cpu", "--wait"]
    outcome = CliRunner().invoke(main, args)
    assert "submitted dip-" in outcome.output, outcome.output
    assert outcome.exit_code == 1, outcome.output  # one image of three is not an image
    rows = results.read_table(output).to_pylist()
    assert sorted((r["image_id"], r["status"]) for r in rows) == [("a", "ok"), ("b", "ok"), ("c", "error")]
    job_id = outcome.output.split("submitted ")[1].split()[0]

    # A double-fired cron: the same run is not submitted again.
    again = CliRunner().invoke(main, args[:-1])
    assert "already submitted" in again.output and job_id in again.output
    status = CliRunner().invoke(main, ["status", job_id, "--address", ray_head])
    assert status.exit_code == 0 and status.output.strip() == "FAILED"  # exit code 1: some images failed
    logs = CliRunner().invoke(main, ["logs", job_id, "--address", ray_head])
    assert "1 failed" in logs.output


def test_the_head_refuses_requests_without_the_token(ray_head):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{ray_head}/api/jobs/", timeout=10)
    assert info.value.code in (401, 403)


def test_submit_without_the_token_fails_clearly(ray_head, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", HOME=str(tmp_path), RAY_AUTH_TOKEN_PATH=str(tmp_path / "missing-token"))
    outcome = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "status", "dip-x", "--address", ray_head],
                             env=env, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert outcome.returncode != 0
    assert "token" in outcome.stderr.lower(), outcome.stderr
    assert "Traceback" not in outcome.stderr

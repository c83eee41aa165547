"""A Ray cluster of several nodes on this machine, for the cluster fault tests (test_cluster_faults.py).

A head and worker nodes on 127.0.0.1, each a ``ray start --block`` in a process group (a session) of
its own, with its own temporary folder (short, under /tmp: Ray's socket paths must fit 107 bytes)
and its own ports; token authentication on, with a token of the cluster's own that every process
(nodes, drivers, ``dip submit``) finds through ``RAY_AUTH_TOKEN_PATH`` (``env``). Workers carry the
custom resource ``{"fit_slot": 1}`` and the head none, so fits asked to need it (``dip run
--resources-per-fit '{"fit_slot": 1}'``) run only on workers; the head keeps one CPU for Ray Data's
own read and repartition tasks and the Ray Job driver.

    cluster = LocalCluster.start(workers=2)   # the head (with the dashboard: the Jobs API), then workers
    node = cluster.add_worker()                # as an autoscaler would add one; returns once it has joined
    cluster.kill(node)                         # a preemption: every process of the node SIGKILLed
    cluster.stop()                             # every node killed so, its folder removed

Nothing is found or stopped by name and nothing else is touched (never Ray's own stop command, which
stops every Ray of the user): a node's processes are its ``ray start`` process group plus any process
whose command line names the node's temporary folder (a Ray worker that left the group), each signalled by PID.
Worker processes bind ports the kernel picks (Ray's default), so nodes never clash with each other, with
the session's local Ray or with the SeaweedFS server.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).parent / "ray")
OBJECT_STORE_BYTES = 200 * 2**20  # per node: the plan and result rows are small
JOIN_S = 180.0  # a node's start, on a loaded 2-core machine (about 15 s alone)
STOP_S = 30.0  # for a killed ``ray start`` to be reaped
READY = "block forever"  # what `ray start --block` prints once its node has joined


def free_port() -> int:
    """A port the kernel has free now, on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    """One ``ray start --block`` and the processes it started, in its own process group."""

    name: str
    folder: Path  # its temporary folder (Ray's session, logs and sockets) and its log
    process: subprocess.Popen = field(repr=False)
    node_id: str = ""  # Ray's id of the node (hex), from its raylet's command line

    @property
    def log(self) -> Path:
        return self.folder / "ray-start.log"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def pids(self) -> set[int]:
        """Every process of the node now: its process group, the children of its ``ray start``, and
        any process whose command line names its folder."""
        found = set()
        for process in psutil.process_iter(["pid", "cmdline"]):
            try:
                if os.getpgid(process.pid) == self.process.pid or str(self.folder) in " ".join(
                        process.info["cmdline"] or ()):
                    found.add(process.pid)
            except (ProcessLookupError, psutil.Error):
                continue
        try:
            found |= {p.pid for p in psutil.Process(self.process.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
        return found

    def signal(self, number: int) -> None:
        """``number`` to the node's process group and to each of its processes, by PID."""
        pids = self.pids()
        try:
            os.killpg(self.process.pid, number)
        except ProcessLookupError:
            pass
        for pid in pids:
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass


class LocalCluster:
    """A head and worker nodes on 127.0.0.1 (see the module's docstring)."""

    def __init__(self, root: Path, env: dict[str, str] | None = None):
        self.root, self.extra_env = root, env or {}
        self.token = root / "auth_token"
        self.token.write_text(secrets.token_hex(32))
        self.token.chmod(0o600)
        self.nodes: list[Node] = []
        self.head: Node | None = None
        self.port = self.dashboard_port = 0

    @classmethod
    def start(cls, workers: int = 2, env: dict[str, str] | None = None) -> LocalCluster:
        """A head and ``workers`` workers; ``env``: more environment for every node and driver (credentials)."""
        cluster = cls(Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")), env)
        try:
            cluster.start_head()
            cluster.add_workers(workers)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def address(self) -> str:
        """The GCS address, for ``dip run --address``."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        """The dashboard (the Jobs API), for ``dip submit --address``."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a process that talks to the cluster (token authentication)."""
        path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        return {**os.environ, **self.extra_env, "PATH": path, "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.token), "RAY_USAGE_STATS_ENABLED": "0"}

    @property
    def workers(self) -> list[Node]:
        return [node for node in self.nodes if node is not self.head and node.alive]

    def start_head(self) -> Node:
        self.port, self.dashboard_port = free_port(), free_port()
        self.head = self._start("head", [
            "--head", f"--port={self.port}", "--num-cpus=1", "--resources={}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}"])
        return self.head

    def add_worker(self, resources: dict | None = None) -> Node:
        """A worker node with one CPU and ``resources`` (default one fit slot); returns once it has joined."""
        return self._start(f"w{len(self.nodes)}", self._worker_args(resources))

    def add_workers(self, count: int) -> list[Node]:
        """``count`` workers started together (their starts overlap)."""
        nodes = [self._launch(f"w{len(self.nodes)}", self._worker_args(None)) for _ in range(count)]
        for node in nodes:
            self._wait(node)
        return nodes

    def ensure_workers(self, count: int) -> None:
        """Add workers until ``count`` are alive (a test that killed one leaves fewer)."""
        if len(self.workers) < count:
            self.add_workers(count - len(self.workers))

    def kill(self, node: Node) -> None:
        """What a preempted machine does: every process of the node SIGKILLed at once, nothing flushed."""
        node.signal(signal.SIGKILL)
        node.process.wait(timeout=STOP_S)

    def stop(self) -> None:
        """Every node SIGKILLed (workers first, the head last), its folder removed: a test's cluster keeps
        nothing, and ``ray start`` takes a minute to end on SIGTERM (its children left as zombies)."""
        for node in sorted(self.nodes, key=lambda n: n is self.head):
            self.kill(node)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tails(self, lines: int = 20) -> str:
        """The end of each node's ``ray start`` output, for a failure message."""
        return "\n".join(f"--- {n.name}:\n" + "\n".join(n.log.read_text(errors="replace").splitlines()[-lines:])
                         for n in self.nodes if n.log.exists())

    def _worker_args(self, resources: dict | None) -> list[str]:
        return [f"--address={self.address}", "--num-cpus=1",
                f"--resources={json.dumps({'fit_slot': 1} if resources is None else resources)}"]

    def _start(self, name: str, args: list[str]) -> Node:
        node = self._launch(name, args)
        self._wait(node)
        return node

    def _launch(self, name: str, args: list[str]) -> Node:
        folder = self.root / name
        folder.mkdir()
        ports = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                 "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
        command = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={folder / 'ray'}",
                   f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats",
                   *(f"--{port}={free_port()}" for port in ports), *args]
        with open(folder / "ray-start.log", "wb") as log:
            process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        node = Node(name, folder, process)
        self.nodes.append(node)
        return node

    def _wait(self, node: Node) -> None:
        """Until the node's ``ray start`` says it has joined; then its id from its raylet."""
        deadline = time.monotonic() + JOIN_S
        while READY not in node.log.read_text(errors="replace"):
            if not node.alive or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {node.name} did not start:\n{self.log_tails(40)}")
            time.sleep(0.2)
        for pid in node.pids():
            try:
                flags = [a for a in psutil.Process(pid).cmdline() if a.startswith("--node_id=")]
            except psutil.Error:
                continue
            if flags:
                node.node_id = flags[0].split("=", 1)[1]
                return
        raise RuntimeError(f"ray node {node.name}: no raylet with a --node_id among its processes")

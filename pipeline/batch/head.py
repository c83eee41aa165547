"""The driver's watch on the Ray head: a run whose head is lost ends with ``HeadLost``, not a hang.

A driver attached to a cluster (``dip run --address``) waits in Ray Data for results. When the head
node is lost (its machine preempted, its processes killed), Ray's client neither raises nor returns:
it logs "Failed to push error to driver" and after 60 s (Ray's GCS reconnect timeout) terminates the
whole process with exit code 1 and nothing on the terminal. ``watch`` probes the head's GCS port
(a TCP connection, opened and closed) every second while the fits run; once the port has refused or
ignored connections for ``HEAD_LOST_S``, it raises ``HeadLost`` in the main thread (through a signal,
so that it interrupts Ray's wait), and the command ends as "broke off", with a message that says so.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator

HEAD_LOST_S = 20.0  # the GCS unreachable this long: the head is gone (Ray itself gives up after 60 s)
PROBE_S = 1.0  # between probes
CONNECT_S = 2.0  # a probe's connection timeout (a preempted machine answers nothing at all)
SIGNAL = signal.SIGUSR1  # raises HeadLost in the main thread


class HeadLost(RuntimeError):
    """The Ray head stopped answering while the run went on: the run broke off."""


def reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` opens within CONNECT_S."""
    try:
        socket.create_connection((host, port), timeout=CONNECT_S).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def watch(address: str, grace_s: float = HEAD_LOST_S, every_s: float = PROBE_S) -> Iterator[None]:
    """While open, ``HeadLost`` is raised in the main thread once the GCS at ``address`` (host:port)
    has not answered for ``grace_s`` seconds. A no-op outside the main thread (signals go there only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    host, port = address.rsplit(":", 1)
    done = threading.Event()
    lost: list[str] = []

    def raise_lost(signum, frame):
        raise HeadLost(lost[0])

    def probe() -> None:
        since = None
        while not done.wait(every_s):
            if reachable(host, int(port)):
                since = None
                continue
            since = since or time.monotonic()
            if time.monotonic() - since >= grace_s and not done.is_set():
                lost.append(f"the Ray head at {address} has not answered for {grace_s:.0f} s (its node lost?)")
                signal.pthread_kill(threading.main_thread().ident, SIGNAL)
                return

    previous = signal.signal(SIGNAL, raise_lost)
    thread = threading.Thread(target=probe, name="dip-head-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=CONNECT_S + every_s)
        signal.signal(SIGNAL, previous)

"""One run per output at a time: a lease, ``<output>/_LEASE.json``, held while a run or a compaction goes.

A run (``dip run``, ``dip evaluate``, a Ray Job) or ``dip compact`` creates the lease before it
touches the output, renews it every ``HEARTBEAT_S`` seconds from a thread of the driver, and deletes
it when it ends, however it ends. Creation is exclusive, so that of two commands started together
one gets it: a local file is linked into place (never replaced), an object store is asked for a
conditional PUT (``If-None-Match: *``, which S3 and SeaweedFS honour). A second command finds the
lease and is refused in one line naming its holder (command, run id, host, process, last renewal).

A holder that died leaves its lease behind:
- on the same host, a holder whose process is gone is known dead: the lease is taken over at once
  (a SIGKILLed driver, then "rerun the same command");
- elsewhere, a lease not renewed for ``STALE_S`` seconds is stale: it is broken only when asked
  (``--break-lease``), since this side cannot tell a dead driver from a cut network.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from fsspec.implementations.local import LocalFileSystem

from .. import storage

NAME = "_LEASE.json"
HEARTBEAT_S = 30.0  # the holder renews its lease this often
STALE_S = 300.0  # a lease not renewed for this long may be broken (--break-lease)


class LeaseHeld(RuntimeError):
    """Another command holds the output's lease; the message names it and what to do."""


@dataclass
class Lease:
    """A lease this process holds (``acquire``); ``lost`` is set when another command broke it."""

    url: str
    record: dict
    storage_options: dict | None = None
    lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    depth: int = 1  # times this process took it (``acquire`` is re-entrant)


_HELD: dict[str, Lease] = {}  # the leases this process holds, by URL
_HELD_LOCK = threading.Lock()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _read(url: str, storage_options: dict | None) -> dict | None:
    """The lease record at ``url``; None when there is none (an unreadable one counts as stale)."""
    if not storage.exists(url, storage_options):
        return None
    try:
        record = json.loads(storage.read_bytes(url, storage_options))
    except FileNotFoundError:  # released between the check and the read
        return None
    except ValueError:
        return {"holder": "?", "renewed_at": "1970-01-01T00:00:00+00:00"}
    return record if isinstance(record, dict) else {"holder": "?", "renewed_at": "1970-01-01T00:00:00+00:00"}


def _age_s(record: dict) -> float:
    try:
        renewed = dt.datetime.fromisoformat(record["renewed_at"])
    except (KeyError, TypeError, ValueError):
        return float("inf")
    return (_now() - renewed).total_seconds()


def _process_gone(record: dict) -> bool:
    """Whether the holder ran on this host and its process no longer exists."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def describe(record: dict) -> str:
    """Who holds a lease, in words."""
    return (f"{record.get('command', '?')} (run {record.get('holder', '?')}, host {record.get('host', '?')}, "
            f"pid {record.get('pid', '?')}, since {record.get('started_at', '?')}, last renewed "
            f"{_age_s(record):.0f} s ago)")


def _create(url: str, data: bytes, storage_options: dict | None) -> bool:
    """Create ``url`` with ``data`` unless it exists (exclusive); whether this call created it."""
    fs, path = storage.filesystem(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails where the lease exists: never replaces it
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)
        return True
    try:
        storage.retrying("write", url, lambda: fs.pipe_file(path, data, mode="create"), storage_options)
    except (FileExistsError, OSError) as error:
        cause = getattr(error, "__cause__", None)
        code = (getattr(cause, "response", None) or {}).get("Error", {}).get("Code")
        if isinstance(error, FileExistsError) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise
    return True


def acquire(output: str, storage_options: dict | None = None, *, holder: str, command: str,
            break_stale: bool = False, heartbeat_s: float = HEARTBEAT_S) -> Lease:
    """Take the output's lease for ``holder`` (a run id) running ``command`` ("dip run"), and renew
    it every ``heartbeat_s`` seconds until ``release``. ``LeaseHeld`` when another command holds it
    (or held it and stopped renewing it less than ``STALE_S`` ago elsewhere, unless ``break_stale``)."""
    url = storage.under(output, NAME, storage_options=storage_options)
    with _HELD_LOCK:
        if url in _HELD:  # this process holds it already (``dip run`` around the job's own ``run``)
            _HELD[url].depth += 1
            return _HELD[url]
    started = _now().isoformat()
    record = {"holder": holder, "command": command, "host": socket.gethostname(), "pid": os.getpid(),
              "nonce": uuid.uuid4().hex, "started_at": started, "renewed_at": started}
    for _ in range(3):  # a lease released (or broken) between our read and our create: look again
        if _create(url, json.dumps(record).encode(), storage_options):
            lease = Lease(url, record, storage_options)
            lease._thread = threading.Thread(target=_renew, args=(lease, heartbeat_s), name="dip-lease", daemon=True)
            lease._thread.start()
            with _HELD_LOCK:
                _HELD[url] = lease
            return lease
        other = _read(url, storage_options)
        if other is None:
            continue
        age = _age_s(other)
        if not _process_gone(other) and age < STALE_S:
            raise LeaseHeld(f"{output} is in use by {describe(other)}; one run per output at a time: wait for it "
                            "to end")
        if not _process_gone(other) and not break_stale:
            raise LeaseHeld(f"{output} has a stale lease: {describe(other)}; if no run is going on this output, "
                            "break it with --break-lease")
        _remove(url, storage_options)  # its holder is gone: take it over
    raise LeaseHeld(f"{output}: could not take the lease after 3 tries (another command took it meanwhile?)")


def holds(output: str, storage_options: dict | None = None) -> bool:
    """Whether this process holds the output's lease now."""
    with _HELD_LOCK:
        return storage.under(output, NAME, storage_options=storage_options) in _HELD


def _renew(lease: Lease, every_s: float) -> None:
    """The heartbeat: rewrite the lease with a new ``renewed_at`` while it is still ours."""
    while not lease._stop.wait(every_s):
        try:
            current = _read(lease.url, lease.storage_options)
            if current is None or current.get("nonce") != lease.record["nonce"]:
                lease.lost.set()
                return
            lease.record["renewed_at"] = _now().isoformat()
            storage.write_json(lease.url, lease.record, lease.storage_options)
        except OSError:  # the store unreachable past its retries: try again at the next beat
            continue


def release(lease: Lease) -> None:
    """Stop renewing, and delete the lease if it is still ours (the outermost ``release`` of a lease
    taken more than once by this process)."""
    with _HELD_LOCK:
        lease.depth -= 1
        if lease.depth > 0:
            return
        _HELD.pop(lease.url, None)
    lease._stop.set()
    if lease._thread is not None:
        lease._thread.join()
    current = _read(lease.url, lease.storage_options)
    if current is not None and current.get("nonce") == lease.record["nonce"]:
        _remove(lease.url, lease.storage_options)


def _remove(url: str, storage_options: dict | None) -> None:
    """Delete the lease object (and nothing else: not the folder it leaves empty)."""
    fs, path = storage.filesystem(url, storage_options)

    def remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)

    storage.retrying("delete", url, remove, storage_options)


@contextlib.contextmanager
def held(output: str, storage_options: dict | None = None, **kwargs) -> Iterator[Lease]:
    """``acquire`` for the ``with`` block, ``release`` at its end (also on an error)."""
    lease = acquire(output, storage_options, **kwargs)
    try:
        yield lease
    finally:
        release(lease)


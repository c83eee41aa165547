"""All storage access: every path is an fsspec URL (local path, file://, s3://, gs://, memory://).

Writes are atomic: an object store receives the complete bytes in one PUT; a local file is
written to a temporary name beside the target and renamed over it. No reader ever sees a
partially written file under its final name.

Object stores fail for a while (restart, network blip, 503): reads, writes, listings and existence
checks are retried with exponential backoff for up to ``retry_s`` seconds (default 60). Access
denied and no such bucket/object raise at once, naming the URL and never the credentials.
"""

from __future__ import annotations

import http.client
import json
import os
import posixpath
import random
import re
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import aiohttp
import botocore.exceptions
import fsspec
from fsspec.exceptions import FSTimeoutError
from fsspec.implementations.local import LocalFileSystem

RETRY_S = 60.0  # default total retry budget, seconds
FIRST_DELAY_S = 0.5  # backoff: 0.5, 1, 2, 4, 8, 8, ... seconds (times a random 0.5-1 against herds)
MAX_DELAY_S = 8.0

_TRANSIENT_TYPES = (  # refused, reset, timed out, cut off: as the OS, fsspec, aiohttp and botocore say it
    ConnectionError, TimeoutError, FSTimeoutError, http.client.IncompleteRead, aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError, botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
)  # fmt: skip
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling"}
_SECRET_NAME = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)
T = TypeVar("T")


def _is_transient(err: BaseException) -> bool:
    """Connection trouble, timeouts, or an HTTP 5xx / throttling answer (s3fs keeps the botocore
    ClientError as ``__cause__`` of the OSError it raises)."""
    for e in (err, err.__cause__):
        if isinstance(e, _TRANSIENT_TYPES):
            return True
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status >= 500 or response.get("Error", {}).get("Code") in _TRANSIENT_CODES:
                return True
    return False


def _secrets(options) -> set[str]:
    """Credential values in storage_options (nested too) and in the AWS environment variables."""
    found = {os.environ.get(name, "") for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    stack = [options or {}]
    while stack:
        for name, value in stack.pop().items():
            if isinstance(value, dict):
                stack.append(value)
            elif isinstance(value, str) and _SECRET_NAME.search(str(name)):
                found.add(value)
    return {s for s in found if len(s) >= 4}


def _redact(text: str, options) -> str:
    for s in sorted(_secrets(options), key=len, reverse=True):  # longest first: one may contain another
        text = text.replace(s, "***")
    return text


def _retrying(op: str, url: str, options: dict | None, retry_s: float, fn: Callable[[], T]) -> T:
    """``fn()``, retried on transient errors while ``retry_s`` seconds allow another attempt; other
    errors raise at once. Messages name ``op`` and ``url`` and never hold a credential."""
    start, delay, attempt = time.monotonic(), FIRST_DELAY_S, 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as err:  # noqa: BLE001  (classified below: transient errors are retried)
            error = err  # handled below, outside the except block, so that a redacted error has no __context__
        full = "".join(traceback.format_exception(error))
        leaked = _redact(full, options) != full
        where, detail = _redact(f"{op} {url}", options), _redact(f"{type(error).__name__}: {error}", options)
        if _is_transient(error):
            elapsed = time.monotonic() - start
            if elapsed + delay <= retry_s:
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(2 * delay, MAX_DELAY_S)
                continue
            failure: Exception = ConnectionError(
                f"{where}: object store unreachable, gave up after {attempt} attempts in {elapsed:.0f} s"
                f" (retry budget {retry_s:g} s): {detail}"
            )
        elif isinstance(error, PermissionError):
            failure = PermissionError(
                f"{where}: access denied ({detail}); check the credentials (storage_options"
                " 'key'/'secret' or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and their rights on the bucket"
            )
        elif isinstance(error, FileNotFoundError):
            failure = FileNotFoundError(f"{where}: no such bucket or object ({detail})")
        elif leaked:
            failure = OSError(f"{where}: {detail}")
        else:
            raise error
        raise failure from (None if leaked else error)


def filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) for a URL; ``storage_options`` go to the filesystem (e.g. ``{"key": ...,
    "secret": ..., "endpoint_url": "http://127.0.0.1:8333"}`` for an S3-compatible server)."""
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def read_bytes(url: str, storage_options: dict | None = None, *, retry_s: float = RETRY_S) -> bytes:
    fs, path = filesystem(url, storage_options)
    return _retrying("read", url, storage_options, retry_s, lambda: fs.cat_file(path))


def write_bytes(url: str, data: bytes, storage_options: dict | None = None, *, retry_s: float = RETRY_S) -> None:
    """Write ``data`` to ``url`` atomically (temp-and-rename on local disks, one PUT elsewhere)."""
    fs, path = filesystem(url, storage_options)
    put = _write_local if isinstance(fs, LocalFileSystem) else fs.pipe_file
    _retrying("write", url, storage_options, retry_s, lambda: put(path, data))


def _write_local(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_writable(url: str, storage_options: dict | None = None, *, folder: bool = False) -> None:
    """ValueError naming ``url`` and the reason when a file (``folder``: a folder) cannot be made
    there: it is a folder (a file), it sits under a file, or the nearest folder that exists is not
    writable. Checked before any work; local paths only (an object store answers at the first write)."""
    fs, path = filesystem(url, storage_options)
    if not isinstance(fs, LocalFileSystem):
        return
    what = "folder" if folder else "file"
    if os.path.isdir(path) and not folder:
        raise ValueError(f"cannot write {url}: it is a folder (name the {what} to write)")
    if os.path.exists(path) and not os.path.isdir(path) and folder:
        raise ValueError(f"cannot write into {url}: it is a file, not a folder")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"cannot write {url}: {parent} is a file, not a folder")
    target = path if folder and os.path.isdir(path) else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {url}: {target} is not writable")


def write_json(url: str, value, storage_options: dict | None = None, *, retry_s: float = RETRY_S) -> None:
    data = json.dumps(value, indent=2, sort_keys=True, default=str).encode()
    write_bytes(url, data, storage_options, retry_s=retry_s)


def exists(url: str, storage_options: dict | None = None, *, retry_s: float = RETRY_S) -> bool:
    """Whether ``url`` exists now (another worker may have written it: cached listings are dropped)."""
    fs, path = filesystem(url, storage_options)
    fs.invalidate_cache(path)
    return _retrying("check", url, storage_options, retry_s, lambda: fs.exists(path))


def join(prefix: str, *parts: str) -> str:
    """Join key parts onto a URL prefix with '/' (also for local paths)."""
    return posixpath.join(prefix.rstrip("/"), *parts)


def list_files(url_or_glob: str, storage_options: dict | None = None, *, retry_s: float = RETRY_S) -> Iterator[str]:
    """Full URLs of the files under a prefix, or matching a glob, in sorted order. The listing
    is fresh (s3fs's listing cache is dropped first) and taken whole before the first yield."""
    fs, path = filesystem(url_or_glob, storage_options)

    def listing() -> list[str]:
        fs.invalidate_cache()
        if any(ch in path for ch in "*?["):
            return fs.glob(path)
        # Files only: some object stores (SeaweedFS) keep a prefix whose objects are all deleted as an
        # empty folder, which a find of that prefix returns as an entry.
        return [name for name, info in fs.find(path, detail=True).items() if info.get("type") != "directory"]

    for p in sorted(_retrying("list", url_or_glob, storage_options, retry_s, listing)):
        yield fs.unstrip_protocol(p) if not isinstance(fs, LocalFileSystem) else p


def list_dir(url: str, storage_options: dict | None = None, *, retry_s: float = RETRY_S) -> list[tuple[str, bool]]:
    """The entries right under a prefix as (URL, is_folder), sorted; [] when there is none. Fresh,
    like ``list_files``; one listing request per 1,000 entries on an object store."""
    fs, path = filesystem(url, storage_options)

    def listing() -> list[dict]:
        fs.invalidate_cache()
        return fs.ls(path, detail=True) if fs.exists(path) else []

    entries = _retrying("list", url, storage_options, retry_s, listing)
    local = isinstance(fs, LocalFileSystem)
    return sorted((e["name"] if local else fs.unstrip_protocol(e["name"]), e["type"] == "directory") for e in entries)


def delete(urls: list[str], storage_options: dict | None = None, *, retry_s: float = RETRY_S,
           below: str | None = None) -> None:
    """Remove files (one batched request per 1,000 keys on S3); files already gone are no error. On a
    local disk the folders this leaves empty go too, as an object store keeps no empty prefix: their
    own folders, and with ``below`` (a folder above them all) every emptied folder up to it, itself included."""
    if not urls:
        return
    fs, _ = filesystem(urls[0], storage_options)
    paths = [filesystem(u, storage_options)[1] for u in urls]
    local = isinstance(fs, LocalFileSystem)
    stop = filesystem(below, storage_options)[1].rstrip("/") if below and local else None

    def remove() -> None:
        fs.invalidate_cache()
        present = [p for p in paths if fs.exists(p)] if local else paths
        if present:
            fs.rm(present)
        for folder in sorted({os.path.dirname(p) for p in paths} if local else (), key=len, reverse=True):
            while os.path.isdir(folder) and not os.listdir(folder):  # the deepest first: parents empty after
                os.rmdir(folder)
                if stop is None or not folder.startswith(stop + "/"):
                    break
                folder = os.path.dirname(folder)

    _retrying("delete", urls[0], storage_options, retry_s, remove)


def arrow_filesystem(url: str, storage_options: dict | None = None):
    """(pyarrow filesystem, path) for a URL, for ``pyarrow.dataset`` reads: pyarrow's own for a local
    path, otherwise the fsspec filesystem wrapped (s3fs with its credentials and endpoint)."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem
    from pyarrow.fs import LocalFileSystem as ArrowLocal

    fs, path = filesystem(url, storage_options)
    return (ArrowLocal(), path) if isinstance(fs, LocalFileSystem) else (PyFileSystem(FSSpecHandler(fs)), path)


def retrying(op: str, url: str, fn: Callable[[], T], storage_options: dict | None = None, *,
             retry_s: float = RETRY_S) -> T:
    """``fn()`` (any read of ``url`` through the filesystem) with this module's retries and messages."""
    return _retrying(op, url, storage_options, retry_s, fn)


_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def safe_key(image_id: str) -> str:
    """The one way an image id becomes a storage key: letters, digits, '.', '_', '-' (not
    first), at most 200 characters, and never '.' or '..'. Anything else raises ValueError
    naming the id; ids are never silently rewritten, so two ids can't collide."""
    if not isinstance(image_id, str) or not _KEY.fullmatch(image_id) or image_id in (".", ".."):
        shown = repr(image_id) if len(str(image_id)) <= 60 else repr(str(image_id)[:60]) + "..."
        raise ValueError(
            f"image_id {shown} is not usable as a storage key: use 1-200 letters, digits, '.', '_' or '-'"
            " (not starting with '.', '_' or '-')"
        )
    return image_id

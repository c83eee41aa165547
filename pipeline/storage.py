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
import stat
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
_NO_CREDENTIALS = (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError,
                   botocore.exceptions.CredentialRetrievalError)
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
        elif isinstance(error, _NO_CREDENTIALS) or isinstance(error.__cause__, _NO_CREDENTIALS):
            failure = PermissionError(
                f"{where}: no credentials ({detail}); give them as storage_options 'key'/'secret' or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
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


class ReadTooSlow(RuntimeError):
    """A read still going at its deadline (``read_bytes(deadline=...)``)."""


READ_CHUNK = 16 * 2**20  # a local file is read in pieces of this many bytes, the deadline checked between


def read_bytes(url: str, storage_options: dict | None = None, *, retry_s: float = RETRY_S,
               max_bytes: int | None = None, deadline: float | None = None) -> bytes:
    """The bytes of one file or object. Only a regular file is read from a local disk: a FIFO, a
    device (``/dev/zero``) or a socket never ends, and is refused (ValueError naming what it is).
    ``max_bytes``: a larger file or object is refused (ValueError) without being read whole.
    ``deadline`` (``time.monotonic()`` seconds): a local read still going then raises ``ReadTooSlow``."""
    fs, path = filesystem(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        return _read_local(url, path, max_bytes, deadline)
    end = None if max_bytes is None else max_bytes + 1  # one ranged GET: a byte more than allowed tells
    try:
        data = _retrying("read", url, storage_options, retry_s, lambda: fs.cat_file(path, start=0 if end else None,
                                                                                        end=end))
    except OSError as error:
        response = getattr(error.__cause__, "response", None) or {}
        if response.get("Error", {}).get("Code") != "InvalidRange":
            raise
        data = b""  # a range of an empty object is not satisfiable (416): the object is empty
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"{url}: more than {max_bytes} bytes, the most an input may have (--max-pixels)")
    return data


def _read_local(url: str, path: str, max_bytes: int | None, deadline: float | None) -> bytes:
    """``read_bytes`` of a local path: a regular file, at most ``max_bytes``, in chunks until ``deadline``."""
    try:
        mode = os.stat(path).st_mode  # follows links: what would be read
    except FileNotFoundError:
        raise FileNotFoundError(f"read {url}: no such file") from None
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))
    kind = next((name for test, name in kinds if test(mode)), None)
    if kind is not None or not stat.S_ISREG(mode):
        raise ValueError(f"{url} is {kind or 'not a regular file'}: only regular files and object-store objects "
                         "are read")
    chunks, size = [], 0
    with open(path, "rb") as f:
        if max_bytes is not None and os.fstat(f.fileno()).st_size > max_bytes:
            raise ValueError(f"{url}: {os.fstat(f.fileno()).st_size} bytes, more than the {max_bytes} an input may "
                             "have (--max-pixels)")
        while chunk := f.read(READ_CHUNK):
            chunks.append(chunk)
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:  # it grew while read
                raise ValueError(f"{url}: more than {max_bytes} bytes, the most an input may have (--max-pixels)")
            if deadline is not None and time.monotonic() > deadline:
                raise ReadTooSlow(f"{url}: still reading after the time limit ({size} bytes read)")
    return b"".join(chunks)


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


def probe(folder: str, storage_options: dict | None = None, *, retry_s: float = RETRY_S) -> None:
    """Write and delete a small object under ``folder``: ValueError naming the folder and the reason
    when that fails (a folder that is a file, not writable, a bucket that refuses writes). A folder
    the probe made on a local disk goes again with it."""
    fs, path = filesystem(folder, storage_options)
    key = join(folder, f"_probe-{uuid.uuid4().hex}")
    try:
        if isinstance(fs, LocalFileSystem):
            made = []  # the folders the probe makes, deepest first
            folder_path = os.path.abspath(path)
            while not os.path.exists(folder_path):
                made.append(folder_path)
                folder_path = os.path.dirname(folder_path)
            os.makedirs(path, exist_ok=True)
            _write_local(filesystem(key, storage_options)[1], b"probe")
            os.remove(filesystem(key, storage_options)[1])
            for made_folder in made:
                os.rmdir(made_folder)
            return
        write_bytes(key, b"probe", storage_options, retry_s=retry_s)
        _retrying("delete", key, storage_options, retry_s, lambda: fs.rm_file(filesystem(key, storage_options)[1]))
    except OSError as error:
        reason = error.strerror if isinstance(fs, LocalFileSystem) and error.strerror else str(error)
        raise ValueError(f"cannot write under {folder}: {reason}") from None


def same_place(a: str, b: str, storage_options: dict | None = None) -> bool:
    """Whether two URLs name one file: on a local disk after resolving '.', '..' and symbolic links
    (``x.png``, ``./x.png`` and a link to it are one), elsewhere as the filesystem writes them."""
    fs_a, path_a = filesystem(a, storage_options)
    fs_b, path_b = filesystem(b, storage_options)
    if isinstance(fs_a, LocalFileSystem) and isinstance(fs_b, LocalFileSystem):
        return os.path.realpath(path_a) == os.path.realpath(path_b)
    return type(fs_a) is type(fs_b) and fs_a.unstrip_protocol(path_a) == fs_b.unstrip_protocol(path_b)


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
        yield p if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(p)


def canonical(url: str, storage_options: dict | None = None) -> str:
    """``url`` as listings name files: an absolute path on a local disk, a full URL elsewhere."""
    fs, path = filesystem(url, storage_options)
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


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
_NAME_RULE = "use 1-200 letters, digits, '.', '_' or '-' (not starting with '.', '_' or '-')"
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")  # one name of a path under an output


def check_name(value: str, what: str) -> str:
    """``value`` when it is usable as one storage key part: letters, digits, '.', '_', '-' (not
    first), at most 200 characters, never '.' or '..'. Anything else raises ValueError naming
    ``what`` and the value; names are never silently rewritten, so two can't collide."""
    if not isinstance(value, str) or not _KEY.fullmatch(value) or value in (".", ".."):
        shown = repr(value) if len(str(value)) <= 60 else repr(str(value)[:60]) + "..."
        raise ValueError(f"{what} {shown} is not usable as a storage key: {_NAME_RULE}")
    return value


def safe_key(image_id: str) -> str:
    """The one way an image id becomes a storage key (``check_name``)."""
    return check_name(image_id, "image_id")


def under(output: str, *parts: str, storage_options: dict | None = None) -> str:
    """The URL of ``parts`` below ``output``: the one way a run builds a path it writes, reads back or
    deletes. Each part is one name (letters, digits, '.', '_', '-', not starting with '.' or '-': no
    '/', no '..'); on a local disk the path, its
    symbolic links resolved, must stay inside the output's own real path (a link to elsewhere is
    refused, naming where it leads). ValueError otherwise; nothing outside an output is touched."""
    for part in parts:
        if not isinstance(part, str) or not _PART.fullmatch(part):
            raise ValueError(f"{part!r} is not one name under the output {output}: use letters, digits, '.', '_' "
                             "or '-', no '/' and no '..'")
    url = join(output, *parts)
    fs, path = filesystem(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        base = os.path.realpath(filesystem(output, storage_options)[1])
        real = os.path.realpath(path)
        if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
            raise ValueError(f"refusing {url}: it resolves to {real}, outside the output {base} (a symbolic link?)")
    return url

"""All storage access: every path is an fsspec URL (local path, file://, s3://, gs://, memory://).

Writes are atomic: an object store receives the complete bytes in one PUT; a local file is
written to a temporary name beside the target and renamed over it. No reader ever sees a
partially written file under its final name.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import uuid
from collections.abc import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem


def filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) for a URL; ``storage_options`` go to the filesystem (e.g.
    ``{"endpoint_url": "http://127.0.0.1:8333"}`` for an S3-compatible server)."""
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
    fs, path = filesystem(url, storage_options)
    return fs.cat_file(path)


def write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` to ``url`` atomically (temp-and-rename on local disks, one PUT elsewhere)."""
    fs, path = filesystem(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_json(url: str, value, storage_options: dict | None = None) -> None:
    write_bytes(url, json.dumps(value, indent=2, sort_keys=True, default=str).encode(), storage_options)


def exists(url: str, storage_options: dict | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return fs.exists(path)


def join(prefix: str, *parts: str) -> str:
    """Join key parts onto a URL prefix with '/' (also for local paths)."""
    return posixpath.join(prefix.rstrip("/"), *parts)


def list_files(url_or_glob: str, storage_options: dict | None = None) -> Iterator[str]:
    """Full URLs of the files under a prefix, or matching a glob, in sorted order."""
    fs, path = filesystem(url_or_glob, storage_options)
    fs.invalidate_cache()
    if any(ch in path for ch in "*?["):
        paths = fs.glob(path)
    else:
        paths = fs.find(path)
    for p in sorted(paths):
        yield fs.unstrip_protocol(p) if not isinstance(fs, LocalFileSystem) else p


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

"""pipeline.storage: local and memory:// behaviour, retries and error messages on a fake flaky
store, and the same calls through s3fs against a real S3 server (SeaweedFS, see conftest.py)."""

import os
import threading
import time
import traceback
import uuid

import fsspec
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from fsspec.implementations.memory import MemoryFileSystem
from s3fs.errors import translate_boto_error

from pipeline import storage

# ---- local disk and memory:// ----


def test_local_write_is_atomic_and_overwrites(tmp_path):
    url = str(tmp_path / "out" / "a.bin")
    storage.write_bytes(url, b"first")
    storage.write_bytes(url, b"second")
    assert storage.read_bytes(url) == b"second"
    assert os.listdir(tmp_path / "out") == ["a.bin"]  # no temp files left beside it


def test_local_write_that_fails_leaves_neither_target_nor_temp_file(tmp_path, monkeypatch):
    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="No space"):
        storage.write_bytes(str(tmp_path / "a.bin"), b"data")
    assert os.listdir(tmp_path) == []


def test_memory_round_trip():
    prefix = f"memory://{uuid.uuid4().hex}"
    storage.write_json(storage.join(prefix, "run.json"), {"b": 1, "a": [1, 2]})
    assert storage.read_bytes(storage.join(prefix, "run.json")) == b'{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}'
    assert storage.exists(storage.join(prefix, "run.json"))
    assert not storage.exists(storage.join(prefix, "other.json"))


def test_join():
    assert storage.join("s3://bucket/out/", "restored", "x.png") == "s3://bucket/out/restored/x.png"
    assert storage.join("/data/out", "x.png") == "/data/out/x.png"


@pytest.fixture(params=["memory", "local"])
def prefix(request, tmp_path):
    return f"memory:///{uuid.uuid4().hex}" if request.param == "memory" else str(tmp_path)  # the root is "/"


def test_list_files_under_prefix_and_glob(prefix):
    for key in ("b.png", "a.png", "sub/c.png", "sub/d.txt"):
        storage.write_bytes(storage.join(prefix, key), b"x")
    names = lambda urls: [u[len(prefix) + 1 :] for u in urls]  # noqa: E731  (a one-line helper, named for the asserts)
    assert names(storage.list_files(prefix)) == ["a.png", "b.png", "sub/c.png", "sub/d.txt"]
    assert names(storage.list_files(storage.join(prefix, "sub"))) == ["sub/c.png", "sub/d.txt"]
    assert names(storage.list_files(storage.join(prefix, "*.png"))) == ["a.png", "b.png"]
    assert names(storage.list_files(storage.join(prefix, "**", "*.png"))) == ["a.png", "b.png", "sub/c.png"]


BAD_IDS = ["../etc/passwd", "a/../../b", "/abs/path", "a/b", "a\x00b", "x" * 1000, "", ".", "..", ".hidden", "-x",
           "a b"]


@pytest.mark.parametrize("image_id", BAD_IDS)
def test_safe_key_refuses_unsafe_ids_naming_them(image_id):
    with pytest.raises(ValueError, match="not usable as a storage key") as info:
        storage.safe_key(image_id)
    assert repr(image_id[:60])[:-1] in str(info.value)


@pytest.mark.parametrize("image_id", ["img_001.png", "A-1", "0", "x" * 200, "photo.2024.tif"])
def test_safe_key_passes_good_ids_unchanged(image_id):
    assert storage.safe_key(image_id) == image_id


# ---- retries and messages, on a memory:// store made to fail ----


def _client_error(code: str, status: int, operation: str = "PutObject") -> Exception:
    """What s3fs raises for an S3 error answer: a Python exception with the ClientError as cause."""
    response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    error = ClientError(response, operation)
    return translate_boto_error(error)


@pytest.fixture
def flaky(monkeypatch):
    """memory:// whose writes raise the errors in ``flaky.errors`` (in turn) before succeeding."""

    class Flaky:
        errors: list[Exception] = []
        calls = 0

    original = MemoryFileSystem.pipe_file

    def pipe_file(self, path, value, **kwargs):
        Flaky.calls += 1
        if Flaky.errors:
            raise Flaky.errors.pop(0)
        return original(self, path, value, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", pipe_file)
    monkeypatch.setattr(storage, "FIRST_DELAY_S", 0.01)
    return Flaky


TRANSIENT = {
    "connection refused": lambda: ConnectionRefusedError(111, "Connection refused"),
    "connection reset": lambda: ConnectionResetError(104, "Connection reset by peer"),
    "endpoint down": lambda: EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b/k"),
    "timeout": lambda: TimeoutError("read timed out"),
    "503": lambda: _client_error("ServiceUnavailable", 503),
    "500": lambda: _client_error("InternalError", 500),
    "slow down": lambda: _client_error("SlowDown", 503),
}


@pytest.mark.parametrize("name", TRANSIENT)
def test_transient_errors_are_retried(flaky, name):
    flaky.errors = [TRANSIENT[name](), TRANSIENT[name]()]
    url = f"memory://{uuid.uuid4().hex}/a.bin"
    storage.write_bytes(url, b"data", retry_s=5)
    assert flaky.calls == 3
    assert storage.read_bytes(url) == b"data"


def test_retries_stop_when_the_budget_is_spent(flaky):
    flaky.errors = [ConnectionRefusedError(111, "Connection refused")] * 1000
    url = f"memory://{uuid.uuid4().hex}/a.bin"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"write {url}: object store unreachable, gave up after"):
        storage.write_bytes(url, b"data", retry_s=0.3)
    assert time.monotonic() - start < 2
    assert flaky.calls > 2


PERMANENT = {
    "access denied": (lambda: _client_error("AccessDenied", 403), PermissionError, "access denied"),
    "bad signature": (lambda: _client_error("SignatureDoesNotMatch", 403), PermissionError, "check the credentials"),
    "no such bucket": (lambda: _client_error("NoSuchBucket", 404), FileNotFoundError, "no such bucket"),
    "bad request": (lambda: _client_error("InvalidArgument", 400), OSError, "InvalidArgument"),
}


@pytest.mark.parametrize("name", PERMANENT)
def test_permanent_errors_raise_at_once(flaky, name):
    make, kind, message = PERMANENT[name]
    flaky.errors = [make()]
    url = f"memory://{uuid.uuid4().hex}/a.bin"
    with pytest.raises(kind, match=message):
        storage.write_bytes(url, b"data", retry_s=60)
    assert flaky.calls == 1


@pytest.mark.parametrize("error", [PermissionError, OSError, ConnectionRefusedError])
def test_messages_never_show_the_credentials(flaky, error):
    secret = "planted-" + uuid.uuid4().hex
    options = {"key": "AKIAPLANTED0000", "secret": secret, "client_kwargs": {"aws_session_token": secret + "tok"}}
    flaky.errors = [error(f"signature for {secret} / AKIAPLANTED0000 / {secret}tok is wrong")] * 1000
    with pytest.raises(OSError) as info:
        storage.write_bytes(f"memory://{uuid.uuid4().hex}/a.bin", b"data", options, retry_s=0.05)
    shown = "".join(traceback.format_exception(info.value))
    assert "***" in shown
    assert secret not in shown and "AKIAPLANTED" not in shown


# ---- a real S3 server, through s3fs ----


def test_s3_round_trip(s3_server, s3_bucket):
    options = s3_server.storage_options
    url = storage.join(s3_bucket, "out", "restored", "a.png")
    assert not storage.exists(url, options)
    storage.write_bytes(url, b"\x89PNG...", options)
    storage.write_json(storage.join(s3_bucket, "out", "runs", "r1.json"), {"ok": True}, options)
    assert storage.read_bytes(url, options) == b"\x89PNG..."
    assert storage.exists(url, options)
    assert list(storage.list_files(storage.join(s3_bucket, "out"), options)) == [
        f"{s3_bucket}/out/restored/a.png",
        f"{s3_bucket}/out/runs/r1.json",
    ]
    assert list(storage.list_files(storage.join(s3_bucket, "out", "*", "*.json"), options)) == [
        f"{s3_bucket}/out/runs/r1.json"
    ]


def test_s3_listing_sees_objects_written_by_another_client(s3_server, s3_bucket):
    options = s3_server.storage_options
    assert list(storage.list_files(s3_bucket, options)) == []
    other = fsspec.filesystem("s3", skip_instance_cache=True, **options)  # e.g. another worker
    other.pipe_file(f"{s3_bucket[5:]}/late.bin", b"x")
    assert list(storage.list_files(s3_bucket, options)) == [f"{s3_bucket}/late.bin"]
    assert storage.exists(f"{s3_bucket}/late.bin", options)


def test_s3_wrong_credentials_are_refused_at_once_without_showing_them(s3_server, s3_bucket):
    secret = "planted-" + uuid.uuid4().hex
    options = {**s3_server.storage_options, "secret": secret}
    url = f"{s3_bucket}/a.bin"
    start = time.monotonic()
    with pytest.raises(PermissionError, match=f"write {url}: access denied .*check the credentials") as info:
        storage.write_bytes(url, b"data", options)
    with pytest.raises(PermissionError, match=f"read {url}: access denied"):
        storage.read_bytes(url, options)
    assert time.monotonic() - start < 10  # refused, not retried for the 60 s budget
    assert secret not in "".join(traceback.format_exception(info.value))


def test_s3_missing_bucket_is_an_error_at_once(s3_server):
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/a.bin"
    with pytest.raises(FileNotFoundError, match=f"write {url}: no such bucket"):
        storage.write_bytes(url, b"data", s3_server.storage_options)


def test_s3_write_while_the_server_is_down_lands_once_it_is_back(s3_server, s3_bucket):
    # botocore's own retries off, so that the outage is bridged by storage's backoff alone
    options = {**s3_server.storage_options, "config_kwargs": {"retries": {"max_attempts": 1}}}
    url = f"{s3_bucket}/during-outage.bin"
    s3_server.stop()
    restart = threading.Timer(3.0, s3_server.start)
    restart.start()
    try:
        assert not s3_server.running
        storage.write_bytes(url, b"survived", options, retry_s=30)
    finally:
        restart.join()
        s3_server.start()
    assert storage.read_bytes(url, options) == b"survived"


def test_delete_removes_files_and_the_local_folders_it_empties(tmp_path):
    for name in ("a/1.bin", "a/2.bin", "b/1.bin", "b/keep.bin"):
        storage.write_bytes(str(tmp_path / name), b"x")
    storage.delete([str(tmp_path / n) for n in ("a/1.bin", "a/2.bin", "b/1.bin", "c/gone.bin")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # a/ emptied and removed; b/ still holds a file
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["keep.bin"]



def test_delete_below_a_folder_removes_every_folder_it_empties_up_to_it(tmp_path):
    for name in ("top/run/x/h/1.json", "top/run/y/h/1.json", "other/1.json"):
        storage.write_bytes(str(tmp_path / name), b"x")
    storage.delete([str(tmp_path / "top/run/x/h/1.json")], below=str(tmp_path / "top"))
    assert [p.name for p in (tmp_path / "top/run").iterdir()] == ["y"]  # x/h/ and x/ went; run/ still holds y/
    storage.delete([str(tmp_path / "top/run/y/h/1.json")], below=str(tmp_path / "top"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]  # up to top/ itself, never above


def test_a_listing_holds_files_only_where_a_store_keeps_emptied_prefixes(s3_server, s3_bucket):
    options = s3_server.storage_options
    urls = [f"{s3_bucket}/claims/r/a/h/{n}.json" for n in (1, 2)]
    for url in urls:
        storage.write_bytes(url, b"{}", options)
    assert list(storage.list_files(f"{s3_bucket}/claims/r", options)) == urls
    storage.delete(urls, options)  # SeaweedFS keeps claims/r/a/h as an empty folder
    assert list(storage.list_files(f"{s3_bucket}/claims/r", options)) == []
    assert list(storage.list_files(f"{s3_bucket}/claims/r/a/h", options)) == []

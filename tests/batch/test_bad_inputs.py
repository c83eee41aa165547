"""The bad-input corpus through `dip run` on the real S3 server: every case is refused before
anything runs, or becomes an error row while the good images finish; nothing is written
outside --output, and no credential shows up in any output or log."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import storage
from pipeline.batch import results
from pipeline.cli.options import EXIT_IMAGES_FAILED, EXIT_NOT_STARTED
from tests.batch.bad_inputs import MAX_PIXELS, encode, image_cases, manifest_cases
from tests.batch.test_job import dip_run
from tests.batch.test_manifest import write_manifest as write_rows


def write_manifest(url: str, rows, options) -> str:
    if isinstance(rows, bytes):  # a file that is not Parquet
        storage.write_bytes(url, rows, options)
        return url
    return write_rows(url, rows, options)


def all_keys(bucket: str, options) -> list[str]:
    return [u.split(bucket.removeprefix("s3://") + "/", 1)[1] for u in storage.list_files(bucket, options)]


def test_bad_images_become_error_rows_and_good_ones_finish(ray_local, s3_server, s3_bucket):
    options = s3_server.storage_options
    data = f"{s3_bucket}/data"
    rows, expected = [], {}
    for name, content, outcome in image_cases():
        storage.write_bytes(f"{data}/{name}.img", content, options)
        rows.append({"image_id": name, "uri": f"{data}/{name}.img"})
        expected[name] = outcome
    good = f"{data}/good-1.img"
    storage.write_bytes(f"{data}/mask-small.png", encode(Image.fromarray(np.full((10, 10), 255, np.uint8))), options)
    storage.write_bytes(f"{data}/mask-black.png", encode(Image.fromarray(np.zeros((20, 24), np.uint8))), options)
    rows += [
        {"image_id": "mask-wrong-size", "uri": good, "task": "inpaint", "mask_uri": f"{data}/mask-small.png"},
        {"image_id": "mask-all-black", "uri": good, "task": "inpaint", "mask_uri": f"{data}/mask-black.png"},
        {"image_id": "missing-object", "uri": f"{data}/nothing-here.png"},
        {"image_id": "too-slow", "uri": good, "params": json.dumps({"time_limit_s": 0.2, "iterations": 10**6})},
    ]
    expected.update({"mask-wrong-size": "mask is 10x10 but the image is 24x20", "mask-all-black": "no known pixel",
                     "missing-object": "nothing-here.png", "too-slow": "time limit"})
    manifest = write_manifest(f"{s3_bucket}/manifest.parquet", rows, options)
    output = f"{s3_bucket}/out"

    outcome = dip_run(manifest, output, "--storage-options", json.dumps(options), "--max-pixels", str(MAX_PIXELS))
    assert outcome.exit_code == EXIT_IMAGES_FAILED, outcome.output

    table = {row["image_id"]: row for row in results.read_table(output, options).to_pylist()}
    assert set(table) == set(expected)
    for image_id, want in expected.items():
        row = table[image_id]
        if want == "ok":
            assert row["status"] == "ok", (image_id, row["error"])
        else:
            assert row["status"] == "error" and want in row["error"], (image_id, row["error"])
    restored = {k.removeprefix("out/restored/").removesuffix(".png") for k in all_keys(s3_bucket, options)
                if k.startswith("out/restored/")}
    assert restored == {k for k, v in expected.items() if v == "ok"}
    # EXIF orientation applied: the 24x16 JPEG displays (and is restored) as 16x24.
    rotated = Image.open(__import__("io").BytesIO(storage.read_bytes(f"{output}/restored/exif-rotated.png", options)))
    assert rotated.size == (16, 24)
    # Nothing outside --output besides the inputs; no credential in any object or in the log.
    assert all(k.startswith(("data/", "out/", "manifest.parquet")) for k in all_keys(s3_bucket, options))
    for url in storage.list_files(output, options):
        assert s3_server.secret_key.encode() not in storage.read_bytes(url, options), url
    assert s3_server.secret_key not in outcome.output
    import ray

    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    for path in logs.rglob("*"):
        if path.is_file():
            assert s3_server.secret_key.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("name,rows,fragment", manifest_cases(), ids=[c[0] for c in manifest_cases()])
def test_bad_manifests_are_refused_before_anything_runs(s3_server, s3_bucket, name, rows, fragment):
    options = s3_server.storage_options
    manifest = write_manifest(f"{s3_bucket}/{name}.parquet", rows, options)
    outcome = dip_run(manifest, f"{s3_bucket}/out", "--storage-options", json.dumps(options))
    assert outcome.exit_code == EXIT_NOT_STARTED, outcome.output
    assert fragment in outcome.output
    assert not any(k.startswith("out/") for k in all_keys(s3_bucket, options))


def test_wrong_credentials_are_refused_clearly_without_showing_them(s3_server, s3_bucket):
    options = s3_server.storage_options
    manifest = write_manifest(f"{s3_bucket}/m.parquet", [{"image_id": "a", "uri": f"{s3_bucket}/a.png"}], options)
    wrong = {**options, "secret": "wrong-" + "s3cr3t-planted-value"}
    outcome = dip_run(manifest, f"{s3_bucket}/out", "--storage-options", json.dumps(wrong))
    assert outcome.exit_code == EXIT_NOT_STARTED
    assert "access denied" in outcome.output.lower() or "credentials" in outcome.output.lower(), outcome.output
    assert "s3cr3t-planted-value" not in outcome.output

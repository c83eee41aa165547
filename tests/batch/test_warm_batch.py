"""Warm starts in the batch job: a collection's weights learned once on real local Ray, stored under
the output on the real S3 server, and every image of the collection started from them."""

import json

import pytest
from click.testing import CliRunner

from pipeline import storage
from pipeline.batch import manifest, results
from pipeline.cli.main import main
from pipeline.cli.options import EXIT_OK
from pipeline.core.options import Options
from pipeline.core.warm import load_initial
from tests.batch.test_job import png_bytes
from tests.batch.test_manifest import write_manifest


def test_a_collection_is_learned_once_and_its_images_start_from_it(ray_local, s3_server, s3_bucket):
    options = s3_server.storage_options
    rows = []
    for i in range(5):
        uri = f"{s3_bucket}/in/img{i}.png"
        storage.write_bytes(uri, png_bytes(32, 32, seed=i), options)
        rows.append({"image_id": f"img{i}", "uri": uri, "degradation": "noise:25",
                     "collection": "boxA" if i < 3 else "boxB"})
    source = write_manifest(f"{s3_bucket}/manifest.parquet", rows, options)
    output = f"{s3_bucket}/out"
    args = ["run", "--manifest", source, "--output", output, "--preset", "cpu-small", "--iterations", "20",
            "--device", "cpu", "--quiet", "--warm-start", "collection", "--storage-options", json.dumps(options)]
    outcome = CliRunner().invoke(main, args, catch_exceptions=False)
    assert outcome.exit_code == EXIT_OK, outcome.output

    stored = sorted(u.rsplit("/", 1)[-1] for u in storage.list_files(f"{output}/warm", options))
    assert stored == ["boxA.pt", "boxB.pt"]
    start = load_initial(storage.read_bytes(f"{output}/warm/boxA.pt", options), preset="cpu-small", channels=3)
    assert start.weights and start.input_seed is not None
    table = {r["image_id"]: r for r in results.read_table(output, options).to_pylist()}
    assert {r["status"] for r in table.values()} == {"ok"}
    assert {r["warm_start"] for r in table.values()} == {"collection"}
    assert table["img0"]["stopped_early"] is not None  # warm starts run with early stopping
    # the collection is part of what a result is: moving an image to another collection refits it
    assert table["img0"]["config_hash"] != manifest.resolve({**rows[0], "collection": "boxB"},
                                                            _defaults()).config_hash

    # A rerun learns nothing and fits nothing; the stored weights stand.
    before = storage.read_bytes(f"{output}/warm/boxA.pt", options)
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == EXIT_OK and "0 ok, 0 failed, 5 skipped (already done)" in again.output
    assert storage.read_bytes(f"{output}/warm/boxA.pt", options) == before


def _defaults():
    return Options(task="denoise", preset="cpu-small", iterations=20, device="cpu", warm_start="collection")


def test_a_bad_collection_name_is_refused_naming_it():
    with pytest.raises(ValueError, match="collection '../x' is not usable"):
        manifest.resolve({"image_id": "a", "uri": "a.png", "collection": "../x"},
                         Options(warm_start="collection"))

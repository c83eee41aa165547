"""Archival files through dip run on the real S3 server: a 16-bit TIFF with its metadata comes back
as a 16-bit TIFF (or PNG, by --output-format) with the metadata and its result row's provenance."""

import io
import json

import numpy as np
import pytest
import tifffile

from pipeline import storage
from pipeline.batch import results
from pipeline.core.images import decode
from pipeline.core.metadata import read_provenance
from tests.batch.test_job import dip_run
from tests.batch.test_manifest import write_manifest
from tests.core.test_archival import ICC, archival_tiff, check_carried


@pytest.mark.parametrize("output_format, suffix", [("same", ".tif"), ("png", ".png")])
def test_a_16_bit_tiff_scan_round_trips_through_dip_run_on_s3(ray_local, s3_server, s3_bucket, output_format,
                                                             suffix):
    options = s3_server.storage_options
    url = f"{s3_bucket}/scans/print.tif"
    storage.write_bytes(url, archival_tiff(), options)
    manifest = write_manifest(f"{s3_bucket}/manifest.parquet", [{"image_id": "print", "uri": url}], options)
    output = f"{s3_bucket}/out"
    outcome = dip_run(manifest, output, "--storage-options", json.dumps(options), "--output-format", output_format)
    assert outcome.exit_code == 0, outcome.output
    (row,) = results.read_table(output, options).to_pylist()
    assert row["status"] == "ok" and row["output_uri"].endswith(f"restored/print{suffix}")
    data = storage.read_bytes(row["output_uri"], options)
    picture = decode(data, name=row["output_uri"])
    assert picture.bit_depth == 16 and picture.metadata.icc == ICC
    if suffix == ".tif":
        written = tifffile.imread(io.BytesIO(data))
        assert written.dtype == np.uint16 and np.any(written % 257)
    check_carried(data, suffix.lstrip(".").replace("tif", "tiff"), dpi=600, exif_sub_ifd=False)
    record = read_provenance(picture.metadata.text)
    assert record["config_hash"] == row["config_hash"] and record["seed"] == row["seed"]
    assert record["iterations"] == row["iterations"] == 3

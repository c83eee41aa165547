"""--task archive through dip run on the real S3 server: the restored image, the mask under masks/
and the new columns of the result rows."""

import json

import torch

from pipeline import storage
from pipeline.batch import results
from pipeline.core.encoding import encode_png
from pipeline.core.images import decode
from tests.batch.test_job import dip_run
from tests.batch.test_manifest import write_manifest
from tests.core.test_defects import planted
from tests.core.test_fit import smooth_image


def test_task_archive_through_dip_run_writes_the_image_its_mask_and_the_new_columns(ray_local, s3_server, s3_bucket):
    options = s3_server.storage_options
    noisy, defect, _ = planted()
    scan, clean = f"{s3_bucket}/scans/scan.png", f"{s3_bucket}/clean/smooth.png"
    storage.write_bytes(scan, encode_png(noisy), options)
    storage.write_bytes(clean, encode_png(smooth_image(96, 128)), options)
    manifest = write_manifest(f"{s3_bucket}/manifest.parquet", [
        {"image_id": "scan", "uri": scan},  # a real scan: no ground truth
        {"image_id": "synthetic", "uri": clean, "degradation": "archive:8"},  # an evaluation: truth kept
    ], options)
    output = f"{s3_bucket}/out"
    outcome = dip_run(manifest, output, "--task", "archive", "--storage-options", json.dumps(options))
    assert outcome.exit_code == 0, outcome.output
    rows = {row["image_id"]: row for row in results.read_table(output, options).to_pylist()}
    assert {row["status"] for row in rows.values()} == {"ok"}, rows
    row = rows["scan"]
    assert row["task"] == "archive" and row["stop_rule"] == "discrepancy" and row["noise_sigma"] > 0
    assert row["mask_output_uri"] == storage.join(output, "masks", "scan.png")
    mask = decode(storage.read_bytes(row["mask_output_uri"], options), name="mask")
    assert (mask.width, mask.height) == (96, 96)
    masked = mask.pixels[0, 0] < 0.5
    assert (masked & defect).sum() >= 0.9 * defect.sum()
    assert row["defect_fraction"] == masked.float().mean().item()
    assert row["mask_precision"] is None and row["noise_sigma_true"] is None  # no truth for a real scan
    assert decode(storage.read_bytes(row["output_uri"], options), name="out").width == 96
    evaluated = rows["synthetic"]
    assert 0 < evaluated["mask_recall"] <= 1 and 0 < evaluated["mask_iou"] <= 1
    assert abs(evaluated["noise_sigma"] - evaluated["noise_sigma_true"]) < 0.3 * evaluated["noise_sigma_true"]
    assert torch.isfinite(torch.tensor(evaluated["psnr"]))

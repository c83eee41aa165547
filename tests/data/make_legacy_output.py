"""Writes tests/data/legacy_output/: result rows in the per-image layout that `dip run` wrote up to
commit d4b3299 (results/<image_id>/<config_hash>-<attempt>-<status>.parquet, one row per file), made
by that commit's own writer. Run from a checkout of d4b3299 (e.g. `git worktree add /tmp/old d4b3299`):

    cd /tmp/old && python /path/to/tests/data/make_legacy_output.py /path/to/tests/data/legacy_output
"""

import datetime as dt
import json
import sys

from pipeline.batch import results  # the old module: write_row(output, row, extra)

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
output = sys.argv[1]
history = json.dumps([{"iteration": i, "loss": 0.01 / i, "psnr_observation": 20 + i / 100,
                       "psnr_reference": 25 + i / 150, "seconds": i / 10} for i in (100, 200, 300)])
base = {"task": "denoise", "preset": "cpu-small", "config_hash": "0123456789abcdef", "run_id": "old-run",
        "device": "cpu", "started_at": T0, "iterations": 300, "history": history}
rows = [
    ({"image_id": "scan-1", "status": "error", "attempt": 1, "error": "FitDiverged: loss became nan",
      "finished_at": T0, "seconds": 1.0}, {"box": "B1"}),
    ({"image_id": "scan-1", "status": "ok", "attempt": 2, "psnr": 28.5, "psnr_input": 20.2, "psnr_baseline": 20.2,
      "output_uri": "restored/scan-1.png", "finished_at": T0 + dt.timedelta(hours=1), "seconds": 9.0}, {"box": "B1"}),
    ({"image_id": "scan-2", "status": "ok", "attempt": 1, "psnr": 27.0, "psnr_input": 20.1, "psnr_baseline": 20.1,
      "output_uri": "restored/scan-2.png", "finished_at": T0, "seconds": 8.0}, {"box": "B2"}),
    ({"image_id": "scan-3", "status": "error", "attempt": 1, "error": "FileNotFoundError: read scan-3.tif",
      "finished_at": T0, "seconds": 0.1}, {"box": "B2"}),
]
for row, extra in rows:
    print(results.write_row(output, {**base, **row, "uri": f"s3://archive/{row['image_id']}.tif"}, extra))

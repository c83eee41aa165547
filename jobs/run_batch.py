"""Ray Job entrypoint for one batch run (what `dip submit` runs on the cluster's head).

    python jobs/run_batch.py --manifest s3://bucket/manifest.parquet --output s3://bucket/out [dip run options]

It attaches to the cluster through RAY_ADDRESS, which Ray sets for a job's driver, and exits
with `dip run`'s code: 0 all ok, 1 some images failed, 2 the run could not start, 3 it broke off
(the Ray head lost, say): rerun it to resume.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the packaged working directory

from pipeline.cli.main import main  # noqa: E402  (after the sys.path insert: runs from a checkout)

if __name__ == "__main__":
    sys.exit(main(["run", "--quiet", "--verbose", *sys.argv[1:]]))  # Ray's lines in the job's own log

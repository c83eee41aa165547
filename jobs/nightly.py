"""Ray Job entrypoint for a nightly schedule: run every manifest under a prefix.

    python jobs/nightly.py --manifests s3://bucket/manifests/ --output s3://bucket/restored [dip run options]

Each manifest `<prefix>/<name>.parquet` runs as `dip run --output <output>/<name>`. Images
already restored with the same configuration are skipped, so the schedule can fire as often
as it likes: a night's job only fits what is new or failed. Exits 0 when every run was all
ok, 1 when some images failed, 2 when a run could not start.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the packaged working directory

from pipeline import storage  # noqa: E402  (after the sys.path insert: runs from a checkout)
from pipeline.cli.main import main  # noqa: E402  (after the sys.path insert: runs from a checkout)


def nightly(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifests", required=True, help="Prefix holding *.parquet manifests.")
    parser.add_argument("--output", required=True, help="Output prefix; each manifest gets a folder.")
    parser.add_argument("--storage-options", default="{}")
    args, run_options = parser.parse_known_args(argv)
    manifests = [u for u in storage.list_files(args.manifests, json.loads(args.storage_options))
                 if u.endswith(".parquet")]
    worst = 0
    for url in manifests:
        name = url.rstrip("/").rsplit("/", 1)[-1][: -len(".parquet")]
        output = storage.join(args.output, storage.safe_key(name))
        print(f"nightly: {url} -> {output}", flush=True)
        try:
            main(["run", "--quiet", "--manifest", url, "--output", output,
                  "--storage-options", args.storage_options, *run_options])
        except SystemExit as exit_:
            worst = max(worst, int(exit_.code or 0))
    if not manifests:
        print(f"nightly: no manifests under {args.manifests}", flush=True)
    return worst


if __name__ == "__main__":
    sys.exit(nightly(sys.argv[1:]))

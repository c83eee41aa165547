"""The ``dip`` command group. It imports nothing heavy (no torch, Ray, pyarrow, s3fs, scikit-image
or matplotlib): each command imports what it needs when it runs, so ``dip --help``, ``dip
<command> --help``, ``dip status`` and ``dip logs`` start fast.

    restore            one image (pipeline.cli.restore)
    inspect            a file's metadata and provenance (pipeline.cli.inspect)
    run, demo, manifest, compact   the batch job on Ray, and its results folded (pipeline.cli.run)
    submit, status, logs  the batch job as a Ray Job on a cluster (pipeline.cli.submit)
    evaluate, report   the paper's benchmarks through the batch job, and their report (pipeline.cli.evaluate)
"""

from __future__ import annotations

import sys

import click

from . import evaluate, inspect, restore, run, submit


@click.group()
@click.version_option(package_name="dip")
def main():
    """Deep Image Prior restoration: one image, a batch on Ray, evaluations and reports."""


for command in (restore.restore, inspect.inspect, run.run, run.demo, run.manifest, run.compact, submit.submit,
                submit.status, submit.logs, evaluate.evaluate, evaluate.report):
    main.add_command(command)


if __name__ == "__main__":
    sys.exit(main())

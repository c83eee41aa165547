"""``dip evaluate`` and ``dip report``: the paper's benchmarks through the batch job, and their report."""

from __future__ import annotations

import sys

import click

from ..evaluation.suites import SUITES, default_data
from .options import (
    EXIT_NOT_STARTED,
    address_option,
    batch_options,
    degradation_option,
    num_cpus_option,
    parse_json_object,
    quiet_option,
    storage_options_option,
    verbose_option,
)
from .run import run_batch


@click.command("evaluate")
@click.argument("suite", type=click.Choice(SUITES))
@click.option("--data", help="Where the suite's images are: a folder or prefix laid out like ../shared/data "
              "(default: ../shared/data beside the repository); for 'folder', the clean images.")
@click.option("--limit", type=click.IntRange(1), help="Keep the first N images.")
@click.option("--crop", type=click.IntRange(4), help="Evaluate N x N centre crops (N a multiple of 4), written "
              "under OUTPUT/crops/: for CPU tests and quick checks.")
@degradation_option(
              help="Suite 'folder' (required there): noise:25, downsample:4, mask:bernoulli:0.5, jpeg:10.")
@click.option("--tv-baseline/--no-tv-baseline", default=None,
              help="Also score the TV prior (default: on for set5-x4, off otherwise).")
@click.option("--seeds", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Fit each image K times (fit seeds of their own, one observation); the report shows the mean and "
              "spread per image and per suite.")
@batch_options(exclude={"manifest", "task", "scale", "tv_baseline"})
@address_option
@num_cpus_option
@quiet_option
@verbose_option
def evaluate(suite, data, limit, crop, degradation, tv_baseline, seeds, address, num_cpus, quiet, verbose, **values):
    """Build SUITE's manifest (set5-x4, denoise-color-25, inpaint-samples, folder) under --output
    and run it as a batch; then `dip report OUTPUT`. Exit codes as `dip run`."""
    from .. import storage
    from ..evaluation import evaluate as suites

    try:
        options = parse_json_object(values["storage_options"], "--storage-options")
        storage.check_writable(values["output"], options, folder=True)
        if data is None and suite != "folder":
            data = default_data()
        if data is None:
            raise ValueError(f"suite {suite!r} needs --data"
                             + ("" if suite == "folder" else " (../shared/data is not there)"))
        rows = suites.build_rows(suite, data, values["output"], preset=values["preset"], limit=limit, crop=crop,
                                 degradation=degradation, tv_baseline=tv_baseline, seeds=seeds,
                                 storage_options=options)
        manifest = suites.write_manifest(rows, values["output"], options)
    except (ValueError, OSError, click.BadParameter) as error:
        click.echo(f"dip evaluate: could not start: {error}", err=True)
        sys.exit(EXIT_NOT_STARTED)
    if not quiet:
        fits = f" x {seeds} seeds" if seeds > 1 else ""
        click.echo(f"suite {suite}: {len(rows) // seeds} images{fits}, manifest {manifest}", err=True)
    code = run_batch({**values, "manifest": manifest}, address, num_cpus, quiet, verbose)
    if not quiet:
        click.echo(f"report: dip report {values['output']}", err=True)
    sys.exit(code)


@click.command("report")
@click.argument("output", metavar="URI")
@storage_options_option
def report(output, storage_options):
    """Summarise a run's results under URI: a table here, and report.html, summary.csv and
    summary.md written beside the results."""
    from ..evaluation.report import write_report

    options = parse_json_object(storage_options, "--storage-options")
    try:
        written = write_report(output, options)
    except (ValueError, OSError) as error:
        raise click.ClickException(str(error)) from None
    for url in written:
        click.echo(f"wrote {url}", err=True)

"""``dip evaluate`` and ``dip report``: the paper's benchmarks through the batch job, and their report."""

from __future__ import annotations

import sys

import click

from .cli_run import BATCH_OPTIONS, EXIT_NOT_STARTED, parse_json_object, run_batch, with_options
from .evaluate import SUITES, default_data


def batch_params(leave_out: set[str]) -> list[click.Parameter]:
    """The options of ``dip run`` as click parameters, in their order, less those in ``leave_out``."""
    def probe():
        pass

    probe = with_options(BATCH_OPTIONS)(probe)
    return [p for p in reversed(probe.__click_params__) if p.name not in leave_out]


EVALUATE_PARAMS = [
    click.Argument(["suite"], type=click.Choice(SUITES)),
    click.Option(["--data"], help="Where the suite's images are: a folder or prefix laid out like ../shared/data "
                 "(default: ../shared/data beside the repository); for 'folder', the clean images."),
    click.Option(["--limit"], type=click.IntRange(1), help="Keep the first N images."),
    click.Option(["--crop"], type=click.IntRange(4), help="Evaluate N x N centre crops (N a multiple of 4), "
                 "written under OUTPUT/crops/: for CPU tests and quick checks."),
    click.Option(["--degradation"], help="Suite 'folder' (required there): noise:25, downsample:4, "
                 "mask:bernoulli:0.5, jpeg:10."),
    click.Option(["--tv-baseline/--no-tv-baseline"], default=None,
                 help="Also score the TV prior (default: on for set5-x4, off otherwise)."),
    *batch_params({"manifest", "task", "scale"}),
    click.Option(["--address"], help="Ray cluster to attach to (default: RAY_ADDRESS, else start a local Ray)."),
    click.Option(["--num-cpus"], type=click.IntRange(1), help="CPUs of the local Ray (when one is started)."),
    click.Option(["--quiet"], is_flag=True, help="No progress bar."),
]


def register(main: click.Group) -> None:
    @main.command("evaluate", params=EVALUATE_PARAMS)
    def evaluate_command(suite, data, limit, crop, degradation, tv_baseline, address, num_cpus, quiet, **kwargs):
        """Build SUITE's manifest (set5-x4, denoise-color-25, inpaint-samples, folder) under --output
        and run it as a batch; then `dip report OUTPUT`. Exit codes as `dip run`."""
        from . import evaluate

        try:
            options = parse_json_object(kwargs["storage_options"], "--storage-options")
            if data is None and suite != "folder":
                data = default_data()
            if data is None:
                raise ValueError(f"suite {suite!r} needs --data"
                                 + ("" if suite == "folder" else " (../shared/data is not there)"))
            rows = evaluate.build_rows(suite, data, kwargs["output"], preset=kwargs["preset"], limit=limit,
                                       crop=crop, degradation=degradation, tv_baseline=tv_baseline,
                                       storage_options=options)
            manifest = evaluate.write_manifest(rows, kwargs["output"], options)
        except (ValueError, OSError, click.BadParameter) as error:
            click.echo(f"dip evaluate: could not start: {error}", err=True)
            sys.exit(EXIT_NOT_STARTED)
        if not quiet:
            click.echo(f"suite {suite}: {len(rows)} images, manifest {manifest}", err=True)
        code = run_batch({**kwargs, "manifest": manifest, "task": "denoise", "scale": None}, address, num_cpus, quiet)
        if not quiet:
            click.echo(f"report: dip report {kwargs['output']}", err=True)
        sys.exit(code)

    @main.command("report")
    @click.argument("output", metavar="URI")
    @click.option("--storage-options", default="{}", help="JSON options for fsspec (e.g. endpoint_url).")
    def report_command(output, storage_options):
        """Summarise a run's results under URI: a table here, and report.html, summary.csv and
        summary.md written beside the results."""
        from .report import write_report

        options = parse_json_object(storage_options, "--storage-options")
        try:
            written = write_report(output, options)
        except (ValueError, OSError) as error:
            raise click.ClickException(str(error)) from None
        for url in written:
            click.echo(f"wrote {url}", err=True)

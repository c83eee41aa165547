"""``dip run``, ``dip demo`` and ``dip manifest``: the batch job from the command line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from ..core.options import OPTION_NAMES, Options
from ..core.presets import PRESET_NAMES
from .options import (
    EXIT_BROKE_OFF,
    EXIT_IMAGES_FAILED,
    EXIT_NOT_STARTED,
    EXIT_OK,
    address_option,
    batch_options,
    break_lease_option,
    degradation_option,
    fit_option,
    num_cpus_option,
    options_field,
    output_option,
    parse_json_object,
    quiet_option,
    storage_options_option,
    verbose_option,
)

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def run_config(values: dict):
    """A ``pipeline.batch.job.RunConfig`` from option values named as ``Options`` and ``RunConfig``
    fields (``storage_options`` as JSON text); what is not given takes their defaults."""
    from ..batch.job import RunConfig

    values = dict(values)
    defaults = Options.from_dict({name: values.pop(name) for name in OPTION_NAMES if name in values})
    storage_options = parse_json_object(values.pop("storage_options", "{}"), "--storage-options")
    resources = parse_json_object(values.pop("resources_per_fit", None) or "{}", "--resources-per-fit")
    return RunConfig(defaults=defaults, storage_options=storage_options, resources_per_fit=resources, **values)


def run_batch(values: dict, address: str | None, num_cpus: int | None = None, quiet: bool = False,
              verbose: bool = False) -> int:
    """Shared by ``dip run``, ``dip demo``, ``dip evaluate`` and ``jobs/``: returns the exit code.

    Plans first (a bad manifest fails in a second, a rerun with nothing left starts no Ray), then
    starts or attaches to Ray; Ray's own log lines go to ``raylog.log_path`` unless ``verbose``."""
    import contextlib

    from ..batch import lease
    from ..batch.job import check_output, new_run_id, run, start_ray
    from ..batch.manifest import ManifestError
    from .progress import RunProgress
    from .raylog import log_path, ray_output_to

    progress, started, log = None, [], None
    try:
        config = run_config({**values, "run_id": values.get("run_id") or new_run_id()})
        check_output(config)  # and the lease, before the run's Ray log is written under the output
        log = None if verbose else log_path(config.output, config.run_id)
        with lease.held(config.output, config.storage_options, holder=config.run_id, command=config.command,
                        break_stale=config.break_lease), \
                (contextlib.nullcontext(sys.stderr) if log is None else ray_output_to(log)) as terminal, \
                RunProgress(quiet=quiet, file=terminal) as progress:
            summary = run(config, on_result=progress.advance, on_plan=progress.start, on_lost=progress.retract,
                          connect=lambda: started.append(start_ray(address, num_cpus)))
            if started and started[0]:  # the local Ray this command started (stopped) or the cluster it attached
                # to (left), while Ray's output is still logged: Ray prints the cluster's messages until then
                import ray

                ray.shutdown()
    except Exception as error:  # noqa: BLE001  (any failure: an exit code and one line, never a traceback)
        if progress is not None and progress.task is not None:  # fits had begun: rerun to resume
            click.echo(f"dip run: the run broke off: {type(error).__name__}: {error}; rerun the same command to "
                       "resume", err=True)
            if started and log is not None:
                click.echo(f"Ray's log: {log}", err=True)
            return EXIT_BROKE_OFF
        reason = str(error) if isinstance(error, (ManifestError, ValueError, OSError, lease.LeaseHeld)) else \
            f"{type(error).__name__}: {error}"
        click.echo(f"dip run: could not start: {reason}", err=True)
        return EXIT_NOT_STARTED
    progress.print_summary(summary)
    if started and log is not None and not quiet:
        click.echo(f"Ray's log: {log}", err=True)
    if summary.unrecorded:  # rows a lost node took with it, after every pass: the run is not complete
        return EXIT_BROKE_OFF
    return EXIT_OK if summary.failed == 0 else EXIT_IMAGES_FAILED


def demo_manifest(folder: Path) -> Path:
    """A manifest over the bundled samples: denoising, x4 super-resolution, inpainting."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"image_id": "f16-noise25", "uri": str(SAMPLES / "f16.png"), "degradation": "noise:25"},
        {"image_id": "zebra-x4", "uri": str(SAMPLES / "zebra.png"), "degradation": "downsample:4"},
        {"image_id": "kate-text", "uri": str(SAMPLES / "kate.png"), "task": "inpaint",
         "mask_uri": str(SAMPLES / "kate_mask.png"), "reference_uri": str(SAMPLES / "kate.png")},
    ]
    columns = ("image_id", "uri", "task", "degradation", "mask_uri", "reference_uri")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "demo_manifest.parquet"
    pq.write_table(pa.table({c: [row.get(c) for row in rows] for c in columns}), path)
    return path


@click.command("run")
@batch_options()
@address_option
@num_cpus_option
@quiet_option
@verbose_option
def run(address, num_cpus, quiet, verbose, **values):
    """Restore every image of a manifest on Ray; rerun the same command to resume."""
    sys.exit(run_batch(values, address, num_cpus, quiet, verbose))


@click.command()
@output_option("Output folder.", default="out/demo", show_default=True)
@click.option("--preset", type=click.Choice(list(PRESET_NAMES)), default="cpu-small", show_default=True,
              help="The preset of every image (cpu-small: seconds per image on a CPU).")
@click.option("--force/--no-force", default=True, show_default=True, help="Redo images done by an earlier demo.")
@click.option("--iterations", type=click.IntRange(1), help="Override the preset's iteration budget (a quicker look).")
def demo(output, preset, force, iterations):
    """The main job on an embedded default: bundled samples, a local Ray, the CPU preset."""
    manifest = demo_manifest(Path(output))
    values = dict(manifest=str(manifest), output=output, preset=preset, device="cpu", gpus_per_fit=0, force=force,
                  iterations=iterations)
    code = run_batch(values, address=None, num_cpus=min(2, os.cpu_count() or 1))
    if code in (EXIT_OK, EXIT_IMAGES_FAILED):
        click.echo(demo_epilogue(output), err=True)
    sys.exit(code)


def demo_epilogue(output: str) -> str:
    """What the demo tells the user once it ends: where everything is, and what to try next."""
    sample = SAMPLES / "f16.png"
    return "\n".join([
        f"The demo's outputs are under {output}/:",
        f"  {output}/restored/    the restored images",
        f"  {output}/degraded/    what each fit saw (the noisy and the low-resolution input)",
        f"  {output}/results/     the results table (Parquet: PSNR, timings, one row per image)",
        f"  {output}/runs/        each run's record, plan and Ray log",
        f"See the report:  dip report {output}   (then open {output}/report.html)",
        f"Try one image:   dip restore {sample} -o {output}/f16.png --degradation noise:25 --preset cpu-small "
        f"--save-degraded {output}/f16-noisy.png",
    ])


def _column_option(name: str) -> Callable:
    """A fit option of ``Options`` as a manifest column for every row (no default: left out)."""
    help = f"The {name} column of every row. " + options_field(name).metadata["help"]
    return fit_option(options_field(name), cli_default=None, help=help)


@click.command("manifest")
@click.argument("source")
@output_option("Where to write the manifest (.parquet).", required=True)
@_column_option("task")
@_column_option("scale")
@degradation_option(
              help="Degrade the (clean) images first: noise:25, downsample:4, mask:bernoulli:0.5, jpeg:10.")
@_column_option("preset")
@click.option("--mask-pattern", help="Attach each image's mask by name, in the image's folder: '{stem}_mask.png' "
              "(fields {stem}, {name}, {ext}); the masks are not listed as images.")
@click.option("--reference-pattern", help="Attach each image's clean reference by name, as --mask-pattern.")
@storage_options_option
def manifest(source, output, task, scale, degradation, preset, mask_pattern, reference_pattern, storage_options):
    """Build a manifest from the images under a prefix or matching a glob. Image ids are the paths
    below the prefix without the extension (kept where two would clash)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from .. import storage
    from ..batch.manifest import check_rows, listing_rows

    options = parse_json_object(storage_options, "--storage-options")
    try:
        storage.check_writable(output, options)
        rows = listing_rows(source, options, mask_pattern=mask_pattern, reference_pattern=reference_pattern,
                            task=task, scale=scale, degradation=degradation, preset=preset)
        if rows:  # checked as dip run will check it (ids unique and storable, options whole)
            for _ in check_rows(rows, Options(), f"the manifest of {source}"):
                pass
    except (ValueError, OSError) as error:
        click.echo(f"dip manifest: {error}", err=True)
        sys.exit(EXIT_NOT_STARTED)
    if not rows:
        click.echo(f"dip manifest: no images under {source}", err=True)
        sys.exit(EXIT_NOT_STARTED)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    storage.write_bytes(output, buffer.getvalue(), options)
    click.echo(f"wrote {output}: {len(rows)} images")


@click.command("compact")
@click.argument("output", metavar="URI")
@storage_options_option
@break_lease_option
def compact(output, storage_options, break_lease):
    """Fold the result files under URI into a few large ones; superseded attempts go to attempts/.
    Refused while a run holds the output."""
    from ..batch import lease
    from ..batch.compact import compact as fold
    from ..batch.job import new_run_id

    options = parse_json_object(storage_options, "--storage-options")
    try:
        with lease.held(output, options, holder=new_run_id(), command="dip compact", break_stale=break_lease):
            done = fold(output, options)
    except (ValueError, OSError, lease.LeaseHeld) as error:
        raise click.ClickException(str(error)) from None
    if not done.written:
        click.echo(f"{output}: nothing to fold ({done.inputs} result file(s))")
        return
    click.echo(f"{output}: {done.inputs} files, {done.rows} rows: {done.kept} kept in "
               f"{sum('/results/' in u for u in done.written)} file(s), {done.superseded} moved to attempts/")

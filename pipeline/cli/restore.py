"""``dip restore``: one image, read, restored and written (no Ray)."""

from __future__ import annotations

import json
import math
import sys

import click

from ..core.options import OPTION_NAMES
from .options import (
    EXIT_NOT_STARTED,
    fit_options,
    max_pixels_option,
    output_option,
    parse_json_object,
    storage_options_option,
)

PIXELS_PER_THREAD = 256 * 256  # below this many output pixels per thread, more threads cost more than they give


def choose_threads(pixels: int, requested: int | None = None) -> int:
    """The torch threads of one fit: ``requested``, else one per ``PIXELS_PER_THREAD`` output pixels,
    at most the CPUs this process may use (Ray sets OMP_NUM_THREADS for its workers)."""
    import os

    available = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    return requested or max(1, min(available, pixels // PIXELS_PER_THREAD))


def fail(message: str) -> None:
    """A problem found before any fit: one line naming it, exit code 2 (nothing was fitted)."""
    click.echo(f"dip restore: {message}", err=True)
    sys.exit(EXIT_NOT_STARTED)


def json_safe(summary: dict) -> dict:
    """``summary`` with every non-finite number as null, and ``non_finite`` saying what each was
    (``inf``: e.g. an input PSNR against a reference it equals)."""
    bad = {k: str(v) for k, v in summary.items() if isinstance(v, float) and not math.isfinite(v)}
    out = {k: None if k in bad else v for k, v in summary.items()}
    if bad:
        out["non_finite"] = bad
    return out


class FitBar:
    """A progress bar of one image's fit on a terminal (iterations, it/s, loss, PSNR, ETA)."""

    def __init__(self, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]fitting"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]} it/s"), TextColumn("{task.fields[scores]}"),
                                 TextColumn("ETA"), TimeRemainingColumn(), disable=not enabled, transient=True)
        self.task, self.scores = None, ""

    def __enter__(self) -> "FitBar":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, done: int, total: int, entry: dict | None) -> None:
        if self.task is None:
            self.task = self.progress.add_task("fit", total=total, rate="", scores="")
        if entry is not None:
            psnr = entry.get("psnr_reference")
            self.scores = f"loss {entry['loss']:.3g}" + ("" if psnr is None else f", PSNR {psnr:.2f} dB")
        task = self.progress.tasks[self.task]
        rate = f"{task.completed / task.elapsed:.1f}" if task.elapsed else ""
        self.progress.update(self.task, completed=done, total=total, rate=rate, scores=self.scores)


@click.command()
@click.argument("input_url", metavar="INPUT")
@output_option("Where to write the restored image (path or URL): .png or .tif/.tiff (16-bit and alpha kept).",
               required=True)
@fit_options()
@click.option("--mask", help="Inpainting mask (white = known pixel); archive: added to the detected defects "
                             "(--mask-mode).")
@click.option("--save-mask", help="Archive: write the mask the fit used (white = kept, black = filled) here, as PNG.")
@click.option("--reference", help="Clean image, for PSNR/SSIM only.")
@click.option("--guide", help="Flash / no-flash: the flash image (network input).")
@click.option("--degradation", "--degrade", "degradation",
              help="Treat INPUT as clean and degrade it first: noise:25, downsample:4, mask:bernoulli:0.5, jpeg:10, "
                   "archive:12 (grain, dust and scratches), grain:12 (sets the task; INPUT becomes the reference).")
@click.option("--save-degraded", help="With --degradation: write the degraded image the fit sees here (.png or .tif), "
                                      "to compare the restoration with.")
@click.option("--threads", type=click.IntRange(1), help="Torch threads on the CPU (default: one per 256x256 output "
              "pixels, at most the CPUs this process may use).")
@max_pixels_option
@storage_options_option
@click.option("--json", "as_json", is_flag=True, help="Print metrics and timings as one JSON object (non-finite "
              "numbers as null, named in non_finite).")
@click.option("--quiet", is_flag=True, help="No progress bar (there is none when stderr is not a terminal).")
def restore(input_url, output, mask, save_mask, reference, guide, degradation, save_degraded, threads, max_pixels,
            storage_options, as_json, quiet, **fit):
    """Restore one image INPUT (path or URL) and write it to OUTPUT (PNG or TIFF, from its name),
    with INPUT's bit depth, alpha, ICC profile and metadata, and the provenance of the fit.

    Everything is checked before the fit (exit code 2): the inputs, the options, and that OUTPUT
    (and --save-mask, --save-degraded) can be written; a failed fit exits 1."""
    import torch

    from .. import storage
    from ..batch.inputs import load_inputs
    from ..core.encoding import encode
    from ..core.fit import FitDiverged, FitTimeout
    from ..core.formats import output_format
    from ..core.images import ImageError
    from ..core.memory import FitTooLarge
    from ..core.metadata import provenance
    from ..core.options import Options
    from ..core.prepare import resolve_device
    from ..core.restore import restore as run_restore

    # 1. Before any work: the names, the places they go, the inputs and the options.
    try:
        options_json = parse_json_object(storage_options, "--storage-options")
        for target in filter(None, (output, save_mask, save_degraded)):
            storage.check_writable(target, options_json)
        fmt = output_format(output)  # a fit is never lost to an unwritable name
        if save_mask and not save_mask.lower().endswith(".png"):
            raise ValueError(f"--save-mask: the mask is written as PNG: {save_mask!r} should end in .png")
        if save_degraded and not degradation:
            raise ValueError("--save-degraded needs --degradation (there is no degraded image otherwise)")
        degraded_fmt = output_format(save_degraded) if save_degraded else None
        inputs = load_inputs(input_url, mask_uri=mask, reference_uri=reference, guide_uri=guide,
                             degradation=degradation, seed=fit["seed"], storage_options=options_json,
                             max_pixels=max_pixels)
        if inputs.task:  # the degradation sets the task (and the scale)
            fit.update(task=inputs.task, scale=inputs.scale or fit["scale"])
        options = Options.from_dict({**{k: fit[k] for k in OPTION_NAMES}, "device": resolve_device(fit["device"])})
        if save_mask and options.task != "archive":
            raise ValueError(f"--save-mask: task {options.task!r} uses no defect mask (only --task archive does)")
        options.check_complete(has_mask=inputs.mask is not None, has_guide=inputs.guide is not None)
    except (ImageError, ValueError, OSError, click.BadParameter) as error:
        fail(str(error.format_message() if isinstance(error, click.BadParameter) else error))
    scale = options.scale if options.task == "sr" else 1
    torch.set_num_threads(choose_threads(inputs.observed.width * inputs.observed.height * scale * scale, threads))

    # 2. The fit, then the files.
    try:
        if save_degraded:
            storage.write_bytes(save_degraded, encode(inputs.observed, degraded_fmt), options_json)
        with FitBar(enabled=not quiet and sys.stderr.isatty()) as bar:
            result = run_restore(**inputs.restore_kwargs(), options=options, progress=bar)
        record = provenance(task=options.task, preset=result.preset.name, iterations=result.fit.iterations,
                            seed=options.seed)
        storage.write_bytes(output, encode(result.picture, fmt, record), options_json)
        if save_mask:
            storage.write_bytes(save_mask, encode(result.mask, "png"), options_json)
    except (ImageError, ValueError, OSError, FitDiverged, FitTimeout, FitTooLarge) as error:
        raise click.ClickException(str(error)) from None
    summary = {**result.summary(), **inputs.truth_scores(result.mask), "input": input_url, "output": output,
               "device": options.device, "seed": options.seed, "threads": torch.get_num_threads()}
    if save_mask:
        summary["mask"] = save_mask
    if save_degraded:
        summary["degraded"] = save_degraded
    if as_json:
        click.echo(json.dumps(json_safe(summary), allow_nan=False))
    else:
        psnr = summary["psnr"]
        click.echo(f"wrote {output}: {summary['width']}x{summary['height']}, {summary['iterations']} iterations "
                   f"in {summary['seconds']:.1f} s" + (f", PSNR {psnr:.2f} dB" if psnr is not None else "")
                   + (f" (baseline {summary['psnr_baseline']:.2f} dB)" if summary["psnr_baseline"] is not None else "")
                   + (f"; noise {summary['noise_sigma']:.1f}/255" if summary.get("noise_sigma") is not None else "")
                   + (f", {100 * summary['defect_fraction']:.2f}% of pixels filled as defects"
                      if summary.get("defect_fraction") is not None else "")
                   + (f"; the degraded input in {save_degraded}" if save_degraded else ""))

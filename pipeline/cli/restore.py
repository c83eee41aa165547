"""``dip restore``: one image, read, restored and written (no Ray)."""

from __future__ import annotations

import json
import math
import sys
import time

import click

from ..core.options import OPTION_NAMES
from .options import (
    EXIT_NOT_STARTED,
    degradation_option,
    fit_options,
    max_pixels_option,
    output_option,
    parse_json_object,
    quiet_option,
    storage_options_option,
)

PIXELS_PER_THREAD = 256 * 256  # below this many output pixels per thread, more threads cost more than they give


def choose_threads(pixels: int, requested: int | None = None) -> int:
    """The torch threads of one fit: ``requested``, else one per ``PIXELS_PER_THREAD`` output pixels,
    at most the CPUs this process may use (Ray sets OMP_NUM_THREADS for its workers)."""
    import os

    available = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    return requested or max(1, min(available, pixels // PIXELS_PER_THREAD))


def check_targets(input_url: str, targets: dict[str, str | None], inputs: dict[str, str | None],
                  overwrite_input: bool, storage_options: dict) -> None:
    """ValueError naming the options when a file to write is INPUT (unless ``overwrite_input``, for
    -o only), another input file, or the file another option writes: nothing given is ever replaced."""
    from .. import storage

    given = {name: url for name, url in targets.items() if url}
    for name, url in given.items():
        if storage.same_place(url, input_url, storage_options) and not (name == "-o" and overwrite_input):
            extra = " (--overwrite-input allows it for -o)" if name == "-o" else ""
            raise ValueError(f"{name} {url} is INPUT itself: it would be replaced{extra}")
        for other, source in inputs.items():
            if source and storage.same_place(url, source, storage_options):
                raise ValueError(f"{name} {url} is the {other} file: it would be replaced")
    names = list(given)
    for i, name in enumerate(names):
        for other in names[i + 1:]:
            if storage.same_place(given[name], given[other], storage_options):
                raise ValueError(f"{name} and {other} both name {given[name]}: one would replace the other")


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
@degradation_option(
              help="Treat INPUT as clean and degrade it first: noise:25, downsample:4, mask:bernoulli:0.5, jpeg:10, "
                   "archive:12 (grain, dust and scratches), grain:12 (sets the task; INPUT becomes the reference).")
@click.option("--save-degraded", help="With --degradation: write the degraded image the fit sees here (.png or .tif), "
                                      "to compare the restoration with.")
@click.option("--page", type=click.IntRange(0), help="Which page of a multi-page TIFF (or frame of an animated "
              "PNG/WebP/GIF) to restore, counted from 0; such files are refused without it. Thumbnails are not pages.")
@click.option("--overwrite-input", is_flag=True, help="Allow -o to name INPUT itself (the scan is replaced by its "
              "restoration).")
@click.option("--threads", type=click.IntRange(1), help="Torch threads on the CPU (default: one per 256x256 output "
              "pixels, at most the CPUs this process may use).")
@max_pixels_option
@storage_options_option
@click.option("--json", "as_json", is_flag=True, help="Print metrics and timings as one JSON object (non-finite "
              "numbers as null, named in non_finite).")
@quiet_option
def restore(input_url, output, mask, save_mask, reference, guide, degradation, save_degraded, page, overwrite_input,
            threads, max_pixels, storage_options, as_json, quiet, **fit):
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
    started = time.monotonic()
    try:
        options_json = parse_json_object(storage_options, "--storage-options")
        check_targets(input_url, {"-o": output, "--save-mask": save_mask, "--save-degraded": save_degraded},
                      {"--mask": mask, "--reference": reference, "--guide": guide}, overwrite_input, options_json)
        for target in filter(None, (output, save_mask, save_degraded)):
            storage.check_writable(target, options_json)
        fmt = output_format(output)  # a fit is never lost to an unwritable name
        if save_mask and not save_mask.lower().endswith(".png"):
            raise ValueError(f"--save-mask: the mask is written as PNG: {save_mask!r} should end in .png")
        if save_degraded and not degradation:
            raise ValueError("--save-degraded needs --degradation (there is no degraded image otherwise)")
        degraded_fmt = output_format(save_degraded) if save_degraded else None
        time_limit = fit["time_limit_s"]
        inputs = load_inputs(input_url, mask_uri=mask, reference_uri=reference, guide_uri=guide,
                             degradation=degradation, seed=fit["seed"], storage_options=options_json,
                             max_pixels=max_pixels, page=page,
                             deadline=None if time_limit is None else started + time_limit)
        read_s = time.monotonic() - started
        if time_limit is not None:  # the time limit covers the reading: the fit gets what is left
            fit["time_limit_s"] = time_limit - read_s
            if fit["time_limit_s"] <= 0:
                raise ValueError(f"reading the inputs took {time.monotonic() - started:.1f} s, past --time-limit "
                                 f"{time_limit:g}")
        if inputs.task:  # the degradation sets the task (and the scale)
            fit.update(task=inputs.task, scale=inputs.scale or fit["scale"])
        options = Options.from_dict({**{k: fit[k] for k in OPTION_NAMES}, "device": resolve_device(fit["device"])})
        if save_mask and options.task != "archive":
            raise ValueError(f"--save-mask: task {options.task!r} uses no defect mask (only --task archive does)")
        options.check_complete(has_mask=inputs.mask is not None, has_guide=inputs.guide is not None)
    except (ImageError, ValueError, OSError, click.BadParameter) as error:
        fail(str(error.format_message() if isinstance(error, click.BadParameter) else error))
    except storage.ReadTooSlow as error:
        fail(f"reading the inputs ran past --time-limit: {error}")
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
    except FitTimeout as error:
        read = f" (what --time-limit {time_limit:g} left after {read_s:.1f} s reading the inputs)" if time_limit else ""
        raise click.ClickException(f"{error}{read}") from None
    except (ImageError, ValueError, OSError, FitDiverged, FitTooLarge) as error:
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

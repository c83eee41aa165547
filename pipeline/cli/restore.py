"""``dip restore``: one image, read, restored and written (no Ray)."""

from __future__ import annotations

import json

import click

from ..core.options import OPTION_NAMES
from .options import fit_options, max_pixels_option, output_option, parse_json_object, storage_options_option


def configure_threads() -> None:
    """One torch thread per CPU that this process may use (Ray sets OMP_NUM_THREADS)."""
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0))))


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
@max_pixels_option
@storage_options_option
@click.option("--json", "as_json", is_flag=True, help="Print metrics and timings as one JSON object.")
def restore(input_url, output, mask, save_mask, reference, guide, degradation, max_pixels, storage_options, as_json,
            **fit):
    """Restore one image INPUT (path or URL) and write it to OUTPUT (PNG or TIFF, from its name),
    with INPUT's bit depth, alpha, ICC profile and metadata, and the provenance of the fit."""
    from .. import storage
    from ..batch.inputs import load_inputs
    from ..core.encoding import encode
    from ..core.fit import FitDiverged, FitTimeout
    from ..core.formats import output_format
    from ..core.images import ImageError
    from ..core.memory import FitTooLarge
    from ..core.metadata import provenance
    from ..core.options import Options
    from ..core.restore import resolve_device
    from ..core.restore import restore as run_restore

    try:
        fmt = output_format(output)  # before any work: a fit is never lost to an unwritable name
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="-o/--output") from None
    if save_mask and not save_mask.lower().endswith(".png"):
        raise click.BadParameter(f"the mask is written as PNG: {save_mask!r} should end in .png",
                                 param_hint="--save-mask")
    configure_threads()
    options_json = parse_json_object(storage_options, "--storage-options")
    try:
        inputs = load_inputs(input_url, mask_uri=mask, reference_uri=reference, guide_uri=guide,
                             degradation=degradation, seed=fit["seed"], storage_options=options_json,
                             max_pixels=max_pixels)
        if inputs.task:  # the degradation sets the task (and the scale)
            fit.update(task=inputs.task, scale=inputs.scale or fit["scale"])
        options = Options.from_dict({**{k: fit[k] for k in OPTION_NAMES}, "device": resolve_device(fit["device"])})
        if save_mask and options.task != "archive":
            raise ValueError(f"--save-mask: task {options.task!r} uses no defect mask (only --task archive does)")
        result = run_restore(**inputs.restore_kwargs(), options=options)
        record = provenance(task=options.task, preset=result.preset.name, iterations=result.fit.iterations,
                            seed=options.seed)
        storage.write_bytes(output, encode(result.picture, fmt, record), options_json)
        if save_mask:
            storage.write_bytes(save_mask, encode(result.mask, "png"), options_json)
    except (ImageError, ValueError, OSError, FitDiverged, FitTimeout, FitTooLarge) as error:
        raise click.ClickException(str(error)) from None
    summary = {**result.summary(), **inputs.truth_scores(result.mask), "input": input_url, "output": output,
               "device": options.device, "seed": options.seed}
    if save_mask:
        summary["mask"] = save_mask
    if as_json:
        click.echo(json.dumps(summary))
    else:
        psnr = summary["psnr"]
        click.echo(f"wrote {output}: {summary['width']}x{summary['height']}, {summary['iterations']} iterations "
                   f"in {summary['seconds']:.1f} s" + (f", PSNR {psnr:.2f} dB" if psnr is not None else "")
                   + (f" (baseline {summary['psnr_baseline']:.2f} dB)" if summary["psnr_baseline"] is not None else "")
                   + (f"; noise {summary['noise_sigma']:.1f}/255" if summary.get("noise_sigma") is not None else "")
                   + (f", {100 * summary['defect_fraction']:.2f}% of pixels filled as defects"
                      if summary.get("defect_fraction") is not None else ""))

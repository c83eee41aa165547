"""The ``dip`` command: restore one image (more commands: run, submit, evaluate, report)."""

from __future__ import annotations

import json
import sys

import click

from . import storage
from .fit import FitDiverged, FitTimeout
from .memory import FitTooLarge
from .images import DEFAULT_MAX_PIXELS, ImageError, encode_png
from .cli_run import FIT_OPTIONS, parse_json_object, register, with_options
from .cli_eval import register as register_eval
from .cli_submit import register as register_submit

def configure_threads() -> None:
    """One torch thread per CPU that this process may use (Ray sets OMP_NUM_THREADS)."""
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0))))


@click.group()
@click.version_option(package_name="dip")
def main():
    """Deep Image Prior restoration: one image, a batch on Ray, evaluations and reports."""


@main.command()
@click.argument("input_url", metavar="INPUT")
@click.option("-o", "--output", required=True, help="Where to write the restored PNG (path or URL).")
@with_options(FIT_OPTIONS)
@click.option("--mask", help="Inpainting mask (white = known pixel).")
@click.option("--reference", help="Clean image, for PSNR/SSIM only.")
@click.option("--guide", help="Flash / no-flash: the flash image (network input).")
@click.option("--degrade", "degradation", help="Treat INPUT as clean and degrade it first: "
              "noise:25, downsample:4, mask:bernoulli:0.5, jpeg:10 (sets the task; INPUT becomes the reference).")
@click.option("--arch", default="alexnet", show_default=True, help="Feature inversion: alexnet, vgg16, vgg19.")
@click.option("--layer", default="conv5", show_default=True, help="Feature inversion: the layer to invert.")
@click.option("--weights", help="Feature inversion: state-dict file (default: torchvision's cache).")
@click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True)
@click.option("--storage-options", default="{}", help="JSON options for fsspec (e.g. endpoint_url).")
@click.option("--json", "as_json", is_flag=True, help="Print metrics and timings as one JSON object.")
def restore(input_url, output, task, preset, mask, scale, reference, guide, degradation, iterations,
            early_stop, seed, device, time_limit_s, tiling, memory_budget_gb, arch, layer, weights, max_pixels,
            storage_options, as_json):
    """Restore one image INPUT (path or URL) and write a PNG to OUTPUT."""
    from .restore import Options, resolve_device, restore as run_restore
    from .synthetic import synthesize

    configure_threads()
    options_json = parse_json_object(storage_options, "--storage-options")
    try:
        def load(url):
            return storage.read_picture(url, options_json, max_pixels) if url else None

        observed, ref, mask_picture = load(input_url), load(reference), load(mask)
        if degradation:
            synthetic = synthesize(observed, degradation, seed)
            observed, ref, mask_picture = synthetic.observed, synthetic.reference, synthetic.mask
            task, scale = synthetic.task, synthetic.scale or scale
        options = Options(task=task, preset=preset, iterations=iterations, early_stop=early_stop, seed=seed,
                          device=resolve_device(device), scale=scale, arch=arch, layer=layer, weights=weights,
                          time_limit_s=time_limit_s, tiling=tiling, memory_budget_gb=memory_budget_gb)
        result = run_restore(observed, options, mask=mask_picture, reference=ref, guide=load(guide))
        storage.write_bytes(output, encode_png(result.picture), options_json)
    except (ImageError, ValueError, OSError, FitDiverged, FitTimeout, FitTooLarge) as error:
        raise click.ClickException(str(error)) from None
    summary = {**result.summary(), "input": input_url, "output": output, "device": options.device, "seed": seed}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        psnr = summary["psnr"]
        click.echo(f"wrote {output}: {summary['width']}x{summary['height']}, {summary['iterations']} iterations "
                   f"in {summary['seconds']:.1f} s" + (f", PSNR {psnr:.2f} dB" if psnr is not None else "")
                   + (f" (baseline {summary['psnr_baseline']:.2f} dB)" if summary["psnr_baseline"] is not None else ""))


register(main)
register_submit(main)
register_eval(main)


if __name__ == "__main__":
    sys.exit(main())

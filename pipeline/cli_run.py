"""``dip run``, ``dip demo`` and ``dip manifest``: the batch job from the command line."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import click

from . import storage
from .images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from .presets import PRESET_NAMES, TASKS

EXIT_OK, EXIT_IMAGES_FAILED, EXIT_NOT_STARTED, EXIT_BROKE_OFF = 0, 1, 2, 3
SAMPLES = Path(__file__).resolve().parent / "samples"


def with_options(options: list):
    """Apply a list of click options to a command, in the order listed."""
    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function
    return decorate


# The fit options of ``dip restore``; ``dip run`` takes them as defaults for every row.
FIT_OPTIONS = [
    click.option("--task", type=click.Choice(list(TASKS)), default="denoise", show_default=True),
    click.option("--preset", type=click.Choice(list(PRESET_NAMES)), help="Default: the task's paper preset."),
    click.option("--scale", type=click.IntRange(2, 16), help="Super-resolution factor."),
    click.option("--iterations", type=click.IntRange(1), help="Override the preset's iteration budget."),
    click.option("--early-stop/--no-early-stop", default=None, help="Moving-variance early stopping."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Seed (dip run: the base seed; per-image seeds derive from it and the image id)."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
    click.option("--time-limit", "time_limit_s", type=click.FloatRange(min=0, min_open=True),
                 help="Seconds a fit may run before it is stopped as an error."),
    click.option("--tiling/--no-tiling", default=True, show_default=True,
                 help="Fit an image beyond the memory budget in overlapping tiles (off: refuse it)."),
    click.option("--memory-budget-gb", type=click.FloatRange(min=0, min_open=True),
                 help="Memory a fit may use. Default: the device's free memory (CUDA) or available RAM."),
]
FIT_OPTION_NAMES = ("task", "preset", "scale", "iterations", "early_stop", "seed", "device", "time_limit_s",
                    "tiling", "memory_budget_gb")

BATCH_OPTIONS = [
    click.option("--manifest", required=True, help="Parquet manifest (file or folder), any fsspec URL."),
    click.option("--output", required=True, help="Output prefix (folder or URL)."),
    *FIT_OPTIONS,
    click.option("--gpus-per-fit", type=click.FloatRange(0, 1),
                 help="GPU share per fit (1, 0.5, 0.25; 0 = CPU). Default: 1 on a cluster with GPUs, else 0."),
    click.option("--cpus-per-fit", type=click.IntRange(1), default=1, show_default=True,
                 help="CPUs (and torch threads) per fit."),
    click.option("--pack", type=click.IntRange(1, 64), default=1, show_default=True,
                 help="Images per batch; same-size images of a batch are fitted together as one batched "
                      "computation (saturates a GPU with small images)."),
    click.option("--workers", type=click.IntRange(1), help="Fits at once, at most."),
    click.option("--force", is_flag=True, help="Redo images that already have an ok result."),
    click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True),
    click.option("--storage-options", default="{}", help="JSON options for fsspec (e.g. endpoint_url)."),
    click.option("--run-id", help="Default: a new UTC timestamp id."),
]


def parse_json_object(text: str, name: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not valid JSON: {error}", param_hint=name) from None
    if not isinstance(value, dict):
        raise click.BadParameter(f"expected a JSON object, got {text!r}", param_hint=name)
    return value


def start_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Attach to ``address`` (or RAY_ADDRESS, as inside a Ray Job), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def run_batch(kwargs: dict, address: str | None, num_cpus: int | None = None, quiet: bool = False) -> int:
    """Shared by ``dip run``, ``dip demo`` and ``jobs/``: returns the exit code."""
    from .batch import RunConfig, run
    from .manifest import ManifestError
    from .progress import RunProgress
    from .restore import Options

    progress = None
    try:
        storage_options = parse_json_object(kwargs.pop("storage_options"), "--storage-options")
        defaults = Options(**{k: kwargs.pop(k) for k in FIT_OPTION_NAMES})
        config = RunConfig(
            manifest=kwargs["manifest"], output=kwargs["output"], defaults=defaults,
            storage_options=storage_options, gpus_per_fit=kwargs["gpus_per_fit"], cpus_per_fit=kwargs["cpus_per_fit"],
            max_workers=kwargs["workers"], force=kwargs["force"], max_pixels=kwargs["max_pixels"],
            run_id=kwargs["run_id"], pack=kwargs.get("pack", 1))
        start_ray(address, num_cpus)
        with RunProgress(quiet=quiet) as progress:
            summary = run(config, on_result=progress.advance, on_plan=progress.start)
    except Exception as error:
        if progress is not None and progress.task is not None:  # fits had begun: rerun to resume
            click.echo(f"dip run: the run broke off: {type(error).__name__}: {error}", err=True)
            return EXIT_BROKE_OFF
        reason = str(error) if isinstance(error, (ManifestError, ValueError, OSError)) else \
            f"{type(error).__name__}: {error}"
        click.echo(f"dip run: could not start: {reason}", err=True)
        return EXIT_NOT_STARTED
    progress.print_summary(summary)
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


def manifest_id(relative: str) -> str:
    """A storage-safe image id from a relative path; a hash suffix where characters changed."""
    mapped = relative.replace("/", "__")  # folders become '__'; duplicates are caught by the manifest check
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", mapped).lstrip("._-") or "image"
    if cleaned != mapped or len(cleaned) > 180:
        cleaned = cleaned[:180] + "-" + hashlib.blake2b(relative.encode(), digest_size=4).hexdigest()
    return cleaned


def register(main: click.Group) -> None:
    @main.command("run")
    @with_options(BATCH_OPTIONS)
    @click.option("--address", help="Ray cluster to attach to (default: RAY_ADDRESS, else start a local Ray).")
    @click.option("--num-cpus", type=click.IntRange(1), help="CPUs of the local Ray (when one is started).")
    @click.option("--quiet", is_flag=True, help="No progress bar.")
    def run_command(address, num_cpus, quiet, **kwargs):
        """Restore every image of a manifest on Ray; rerun the same command to resume."""
        sys.exit(run_batch(kwargs, address, num_cpus, quiet))

    @main.command()
    @click.option("--output", default="out/demo", show_default=True, help="Output folder.")
    @click.option("--preset", type=click.Choice(list(PRESET_NAMES)), default="cpu-small", show_default=True)
    @click.option("--force/--no-force", default=True, show_default=True, help="Redo images done by an earlier demo.")
    def demo(output, preset, force):
        """The main job on an embedded default: bundled samples, a local Ray, the CPU preset."""
        manifest = demo_manifest(Path(output))
        kwargs = dict(manifest=str(manifest), output=output, task="denoise", preset=preset, scale=None,
                      iterations=None, early_stop=None, seed=0, device="cpu", time_limit_s=None, tiling=True,
                      memory_budget_gb=None, gpus_per_fit=0, cpus_per_fit=1,
                      workers=None, force=force, max_pixels=DEFAULT_MAX_PIXELS, storage_options="{}", run_id=None)
        sys.exit(run_batch(kwargs, address=None, num_cpus=min(2, os.cpu_count() or 1)))

    @main.command("manifest")
    @click.argument("source")
    @click.option("-o", "--output", required=True, help="Where to write the manifest (.parquet).")
    @click.option("--task", type=click.Choice(list(TASKS)), help="Task column for every row.")
    @click.option("--scale", type=click.IntRange(2, 16))
    @click.option("--degradation", help="Degrade the (clean) images first: noise:25, downsample:4, ...")
    @click.option("--preset", type=click.Choice(list(PRESET_NAMES)))
    @click.option("--storage-options", default="{}", help="JSON options for fsspec.")
    def manifest_command(source, output, task, scale, degradation, preset, storage_options):
        """Build a manifest from the images under a prefix or matching a glob."""
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        options = parse_json_object(storage_options, "--storage-options")
        base = source.split("*")[0].rstrip("/")
        rows = []
        for url in storage.list_files(source, options):
            if not url.lower().endswith(IMAGE_SUFFIXES):
                continue
            relative = url[len(base):].lstrip("/") if url.startswith(base) else url.rsplit("/", 1)[-1]
            rows.append({"image_id": manifest_id(relative), "uri": url, "task": task, "scale": scale,
                         "degradation": degradation, "preset": preset})
        if not rows:
            raise click.ClickException(f"no images under {source}")
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buffer)
        storage.write_bytes(output, buffer.getvalue(), options)
        click.echo(f"wrote {output}: {len(rows)} images")

"""What the ``dip`` commands share: their options, declared once, and their exit codes.

The fit options are built from the fields of ``pipeline.core.options.Options`` (flag, type,
range, choices, default and help come from each field's metadata), so ``dip restore``, ``dip
run``, ``dip evaluate`` and ``dip submit`` spell them alike and a manifest's ``params`` use the
same names. Nothing heavy is imported here: no torch, Ray, pyarrow or s3fs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import fields

import click

from ..batch.config import default
from ..core.options import Options

# Exit codes of dip run, evaluate and submit --wait.
EXIT_OK, EXIT_IMAGES_FAILED, EXIT_NOT_STARTED, EXIT_BROKE_OFF = 0, 1, 2, 3


def compose(decorators: Iterable[Callable]) -> Callable:
    """One decorator applying the given click decorators in the order listed (first = top)."""
    decorators = list(decorators)

    def decorate(function):
        for decorator in reversed(decorators):
            function = decorator(function)
        return function
    return decorate


def fit_option(field, **overrides) -> Callable:
    """The click option of one ``Options`` field (``overrides``: metadata to use instead, e.g.
    ``help`` or ``cli_default``)."""
    meta, name = {**field.metadata, **overrides}, field.name
    flag = meta["flag"] or "--" + name.replace("_", "-")
    if meta["kind"] is bool and "/" not in flag:
        flag = f"{flag}/--no-{flag[2:]}"
    kwargs = {"help": meta["help"], "default": meta["cli_default"], "show_default": meta["cli_default"] is not None}
    if meta["kind"] is not bool:
        if meta["choices"]:
            kwargs["type"] = click.Choice(list(meta["choices"]))
        elif meta["low"] is not None or meta["high"] is not None:
            ranged = click.IntRange if meta["kind"] is int else click.FloatRange
            kwargs["type"] = ranged(meta["low"], meta["high"], min_open=meta["low_open"])
        else:
            kwargs["type"] = meta["kind"]
    return click.option(flag, name, **kwargs)


def options_field(name: str):
    """The ``Options`` field called ``name``."""
    return next(f for f in fields(Options) if f.name == name)


def fit_options(exclude: Iterable[str] = ()) -> Callable:
    """Every field of ``Options`` as an option, in field order, but those named in ``exclude``."""
    leave_out = set(exclude)
    return compose(fit_option(f) for f in fields(Options) if f.name not in leave_out)


def output_option(help: str, **kwargs) -> Callable:
    return click.option("-o", "--output", help=help, **kwargs)


storage_options_option = click.option(
    "--storage-options", default="{}", show_default=True,
    help='JSON options for fsspec, e.g. \'{"endpoint_url": "http://127.0.0.1:8333"}\'.')
max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(1), default=default("max_pixels"), show_default=True,
    help="Refuse images with more pixels (width x height) than this, from their header, before decoding.")
address_option = click.option(
    "--address", help="Ray cluster to attach to (default: RAY_ADDRESS, else start a local Ray).")
num_cpus_option = click.option("--num-cpus", type=click.IntRange(1),
                               help="CPUs of the local Ray (when one is started).")
quiet_option = click.option("--quiet", is_flag=True, help="No progress bar (there is none either when stderr is not "
                            "a terminal).")


def degradation_option(help: str) -> Callable:
    """``--degradation`` (alias ``--degrade``): a degradation spec, ``noise:25`` and the like; ``help``
    says what the command does with it."""
    return click.option("--degradation", "--degrade", "degradation", help=help)
verbose_option = click.option("--verbose", is_flag=True, help="Ray's and Ray Data's own log lines on the terminal "
                              "too (default: in the run's Ray log, <output>/runs/<run_id>.ray.log for a local output).")
break_lease_option = click.option(
    "--break-lease", is_flag=True, help="Take over the output's lease (one run per output at a time) when its holder "
    "stopped renewing it 5 minutes ago or more, as a driver killed on another machine leaves it.")
dashboard_option = click.option("--address", required=True, envvar="RAY_ADDRESS",
                                help="Ray dashboard, e.g. http://HEAD:8265 (default: RAY_ADDRESS).")


def batch_options(exclude: Iterable[str] = ()) -> Callable:
    """The options of ``dip run`` (also ``dip submit``'s and ``dip evaluate``'s), but ``exclude``."""
    leave_out = set(exclude)
    options = {
        "manifest": click.option("--manifest", required=True,
                                 help="Parquet manifest (file or folder), any fsspec URL."),
        "output": output_option("Output prefix (folder or URL).", required=True),
        "fit": fit_options(leave_out),
        "gpus_per_fit": click.option(
            "--gpus-per-fit", type=click.FloatRange(0, 1),
            help="GPU share per fit (1, 0.5, 0.25; 0 = CPU). Default: 1 on a cluster with GPUs, else 0."),
        "cpus_per_fit": click.option("--cpus-per-fit", type=click.IntRange(1), default=default("cpus_per_fit"),
                                     show_default=True, help="CPUs (and torch threads) per fit."),
        "resources_per_fit": click.option(
            "--resources-per-fit", help='Custom Ray resources each fit needs, as JSON: \'{"fit_slot": 1}\' runs '
            "fits only on the nodes started with that resource (the workers, never the head)."),
        "pack": click.option("--pack", type=click.IntRange(1, 64), default=default("pack"), show_default=True,
                             help="Images per batch; same-size images of a batch are fitted together as one "
                                  "batched computation (saturates a GPU with small images)."),
        "max_workers": click.option("--workers", "max_workers", type=click.IntRange(1), help="Fits at once, at most."),
        "force": click.option("--force", is_flag=True, help="Redo images that already have an ok result."),
        "max_fit_attempts": click.option(
            "--max-fit-attempts", type=click.IntRange(1), default=default("max_fit_attempts"), show_default=True,
            help="Starts of one image's fit in a run, at most: a fit whose worker or node is lost (a spot instance "
                 "preempted) is started again on another; an image whose worker died this many times (a poison "
                 "image) gets an error row instead."),
        "strict": click.option("--strict", is_flag=True, help="Refuse a manifest with a column that looks like a "
                               "misspelt known one (tsak, mask-uri, Task); default: a warning."),
        "max_pixels": max_pixels_option,
        "output_format": click.option(
            "--output-format", type=click.Choice(["png", "tiff", "same"]), default=default("output_format"),
            show_default=True,
            help="Restored files as PNG or TIFF (Deflate); same: TIFF for a TIFF input, PNG otherwise. 16-bit, "
                 "alpha, ICC profile and metadata kept either way."),
        "storage_options": storage_options_option,
        "run_id": click.option("--run-id", help="A name for the run's files (letters, digits, '.', '_', '-'). Default: "
                               "a new UTC timestamp id."),
        "shard_rows": click.option("--shard-rows", type=click.IntRange(1), default=default("shard_rows"),
                                   show_default=True,
                                   help="Result rows per shard that a fit worker writes, at most."),
        "shard_seconds": click.option("--shard-seconds", type=click.FloatRange(0, min_open=True),
                                      default=default("shard_seconds"), show_default=True,
                                      help="Write a worker's shard once its oldest row is this old (checked as rows "
                                      "arrive, and when the run ends)."),
        "compact": click.option("--compact/--no-compact", default=default("compact"), show_default=True,
                                help="Fold the run's shards into one file at the end (dip compact folds all)."),
        "break_lease": break_lease_option,
    }
    return compose(option for name, option in options.items() if name not in leave_out)


def parse_json_object(text: str, name: str) -> dict:
    """A JSON object from an option's text; click.BadParameter naming the option otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not valid JSON: {error}", param_hint=name) from None
    if not isinstance(value, dict):
        raise click.BadParameter(f"expected a JSON object, got {text!r}", param_hint=name)
    return value

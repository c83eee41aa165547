"""The batch job's configuration (``RunConfig``) and the defaults it shares with the ``dip run`` flags.

No heavy import (no pyarrow, Ray or torch): the ``dip`` command takes its batch flags' defaults
from ``RunConfig``'s fields, so that a default is written once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..core.formats import DEFAULT_MAX_PIXELS
from ..core.options import Options

SHARD_ROWS, SHARD_SECONDS = 1000, 60.0  # a shard per this many rows or seconds, whichever comes first
MAX_FIT_ATTEMPTS = 3  # starts of one image's fit per run, at most (each lost with its worker but the last)


@dataclass(frozen=True)
class RunConfig:
    manifest: str
    output: str
    defaults: Options = Options()
    storage_options: dict = field(default_factory=dict)
    gpus_per_fit: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU fits)
    cpus_per_fit: int = 1  # also the torch threads of each fit
    resources_per_fit: dict = field(default_factory=dict)  # custom Ray resources a fit needs ({"fit_slot": 1})
    pack: int = 1  # same-size images fitted together in one batched computation (pipeline.core.packed)
    max_workers: int | None = None  # actors at most (None: as many as the resources allow)
    force: bool = False  # redo images that already have an ok result
    max_pixels: int = DEFAULT_MAX_PIXELS
    output_format: str = "same"  # restored files: png, tiff, or same (TIFF for a TIFF input, else PNG)
    run_id: str | None = None
    shard_rows: int = SHARD_ROWS  # result rows per shard at most
    shard_seconds: float = SHARD_SECONDS  # and the age of its oldest row at most
    compact: bool = True  # fold the run's shards into one file at the end
    strict: bool = False  # refuse a manifest with a column that looks like a misspelt known one
    max_fit_attempts: int = MAX_FIT_ATTEMPTS  # starts of one image's fit in a run (its worker or node lost)
    break_lease: bool = False  # take over the output's lease when its holder stopped renewing it (lease.STALE_S)
    command: str = "dip run"  # what the output's lease says holds it

    def __post_init__(self):
        if self.run_id is not None:
            from .. import storage

            storage.check_name(self.run_id, "run id")  # it names files under the output, never a path
        check_resources(self.resources_per_fit)
        if self.max_fit_attempts < 1:
            raise ValueError(f"max_fit_attempts must be at least 1, got {self.max_fit_attempts}")

    def public(self) -> dict:
        """The configuration as recorded beside the outputs: storage options are left out."""
        values = asdict(self)
        values["storage_options"] = sorted(self.storage_options)  # names only, never values
        return values


def default(name: str):
    """The default of ``RunConfig``'s field ``name`` (what a ``dip run`` flag shows and uses)."""
    found = next(f for f in fields(RunConfig) if f.name == name)
    return found.default


def check_resources(resources: dict) -> None:
    """ValueError naming the bad entry unless ``resources`` maps custom Ray resource names to amounts
    above 0 (CPUs and GPUs have options of their own, ``cpus_per_fit`` and ``gpus_per_fit``)."""
    for name, amount in resources.items():
        if not isinstance(name, str) or not name or name in ("CPU", "GPU"):
            raise ValueError(f"resources per fit: {name!r} is not a custom resource name (CPUs and GPUs have "
                             "--cpus-per-fit and --gpus-per-fit)")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount > 0:
            raise ValueError(f"resources per fit: {name!r} needs an amount above 0, got {amount!r}")

"""``Options``: the fit options of one image, the one source of truth for them.

The flags of ``dip restore``, ``dip run``, ``dip evaluate`` and ``dip submit`` are built from
these fields (``pipeline.cli.options``), a manifest row's ``params`` use the field names, the
plan stores them, and a result's configuration hash covers all of them but ``device`` and
``time_limit_s`` (``pipeline.batch.manifest``). Adding an option is one field here with its
help text, and its use in ``pipeline.core.restore``.

No torch import: the ``dip`` command builds its help from this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache

from .config import stable_dict
from .presets import PRESET_NAMES, TASKS, Preset, get_preset

SEED_MAX = 2**63 - 1  # seeds are stored as int64 (the results table's seed column)


def option(default, help: str, kind: type, *, nullable: bool | None = None, flag: str | None = None,
           choices: tuple[str, ...] | None = None, low: float | None = None, high: float | None = None,
           low_open: bool = False, cli_default=None):
    """A dataclass field with what the command line needs to know about it (``field.metadata``).

    kind: int, float, str or bool (float accepts ints); nullable: None allowed (default: when the
    default is None); flag: the long flag when it is not ``--<name-with-dashes>`` (a bool gets
    ``--x/--no-x``); choices; low/high: the range, ``low_open`` excluding low; cli_default: the
    command line's default where it differs from the library's (``device``: auto).
    """
    meta = {"help": help, "kind": kind, "nullable": default is None if nullable is None else nullable,
            "flag": flag, "choices": choices, "low": low, "high": high, "low_open": low_open,
            "cli_default": default if cli_default is None else cli_default}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Options:
    """The fit options of one image (``dip restore``'s flags; a manifest row's ``params``)."""

    task: str = option("denoise", "What to restore: " + "; ".join(f"{k}: {v}" for k, v in TASKS.items()) + ".",
                       str, choices=tuple(TASKS))
    preset: str | None = option(None, "Named settings (network, input, fit). Default: the task's paper preset; "
                                "cpu-small for CPU demos and tests.", str, choices=PRESET_NAMES)
    scale: int | None = option(None, "Super-resolution factor (2, 4, 8).", int, low=2, high=16)
    iterations: int | None = option(None, "Override the preset's iteration budget.", int, low=1)
    early_stop: bool | None = option(None, "Early stopping without ground truth, by --stop-rule (default: the "
                                     "preset's, off in every paper preset).", bool,
                                     flag="--early-stop/--no-early-stop")
    stop_rule: str | None = option(None, "The early-stopping rule: wmv (the moving-variance detector, ES-WMV) or "
                                   "discrepancy (stop once the residual reaches the noise level estimated from the "
                                   "image). Default: discrepancy for denoise and archive, wmv otherwise.", str,
                                   choices=("wmv", "discrepancy"))
    seed: int = option(0, "Seed of the network, its input and the jitter (dip run: the base seed; per-image "
                       "seeds derive from it and the image id).", int, low=0, high=SEED_MAX)
    device: str = option("cpu", "auto, cpu, cuda, cuda:1, ... (auto: CUDA when available).", str, cli_default="auto")
    arch: str = option("alexnet", "Feature inversion: the network, alexnet, vgg16 or vgg19.", str)
    layer: str = option("conv5", "Feature inversion: the layer to invert (e.g. conv5, fc6).", str)
    weights: str | None = option(None, "Feature inversion: the network's state-dict file (default: torchvision's "
                                 "cache).", str)
    defect_sensitivity: float = option(1.0, "Archive: how readily dust and scratches are found (2: half the "
                                       "contrast is enough, 0.5: twice as much is needed).", float, low=0,
                                       low_open=True, high=100)
    mask_mode: str = option("combine", "Archive with --mask: combine the given mask with the detected one "
                            "(both black areas are filled), or replace the detection by it.", str,
                            choices=("combine", "replace"))
    restarts: int = option(1, "Fit the image N times, with seeds seed, seed+1, ..., and average the outputs "
                           "(the paper's two-run average on the denoising set); N times the cost.", int, low=1,
                           high=64)
    tv_weight: float = option(0.0, "DIP-TV (Liu et al. 2019): add this weight times the output's mean total "
                              "variation to the loss (0: off).", float, low=0, high=10)
    average_last: int = option(0, "Return the mean of the outputs of the last N iterations instead of the last "
                               "output (0: off; with early stopping, the stopping rule's output).", int, low=0)
    tv_baseline: bool = option(False, "Also minimise the TV prior with the same data term, and score it.", bool)
    time_limit_s: float | None = option(None, "Seconds a fit may run before it is stopped as an error.", float,
                                        flag="--time-limit", low=0, low_open=True)
    tiling: bool = option(True, "Fit an image beyond the memory budget in overlapping tiles (off: refuse it).", bool)
    memory_budget_gb: float | None = option(None, "Memory the restore of one image may use, GiB: on the CPU the "
                                            "whole process, on CUDA the device. Default: the available RAM "
                                            "(CPU) or the device's free memory (CUDA).", float, low=0,
                                            low_open=True)

    def __post_init__(self):
        for f in fields(self):
            check_value(f, getattr(self, f.name))
        get_preset(self.task, self.preset, scale=self.scale)  # raises on an unknown preset or a task mismatch

    @classmethod
    def from_dict(cls, values: dict) -> "Options":
        """Options from a dict of option names; unknown names raise ValueError naming them."""
        unknown = sorted(set(values) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(sorted(OPTION_NAMES))}")
        return cls(**values)

    def with_seed(self, seed: int) -> "Options":
        """These options with another seed; only the seed is checked (the rest already was). A
        manifest's rows differ in little else, so planning a million of them reuses one check."""
        check_value(_SEED, seed)
        copy = object.__new__(Options)
        copy.__dict__.update(self.__dict__)
        object.__setattr__(copy, "seed", seed)
        return copy

    def resolve(self) -> Preset:
        """The preset with this request's overrides (iterations, early stopping) applied."""
        return resolve_preset(self.task, self.preset, self.scale, self.iterations, self.early_stop, self.stop_rule,
                              self.tv_weight, self.average_last)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in OPTION_NAMES}

    def hash_dict(self) -> dict:
        """``to_dict`` less the options added after result hashes were first written, while they
        are at their default (``pipeline.core.config.ADDED_LATER``): what a result's hash covers."""
        return stable_dict(self)

    def check_complete(self, *, has_mask: bool, has_guide: bool) -> None:
        """What the task needs besides the image, checked once for ``dip restore``, the manifest
        and the core: super-resolution a scale, inpainting a mask, flash the flash image."""
        if self.task == "sr" and self.scale is None:
            raise ValueError("task 'sr' needs a scale (--scale, a scale column, or a downsample:S degradation)")
        if self.task == "inpaint" and not has_mask:
            raise ValueError("task 'inpaint' needs a mask (white = known pixel; --mask, mask_uri, or a "
                             "mask:bernoulli:P degradation)")
        if self.task == "flash" and not has_guide:
            raise ValueError("task 'flash' needs the flash image (--guide, guide_uri)")


OPTION_NAMES = tuple(f.name for f in fields(Options))
_SEED = next(f for f in fields(Options) if f.name == "seed")


def check_value(f, value) -> None:
    """ValueError naming the option when ``value`` is not of its kind, range or choices."""
    meta = f.metadata
    kinds = (int, float) if meta["kind"] is float else (meta["kind"],)
    if value is None:
        if meta["nullable"]:
            return
        raise ValueError(f"option {f.name} has a bad value None")
    if not isinstance(value, kinds) or (isinstance(value, bool) and meta["kind"] is not bool):
        raise ValueError(f"option {f.name} has a bad value {value!r}")
    if meta["choices"] and value not in meta["choices"]:
        raise ValueError(f"unknown {f.name} {value!r}; expected one of {', '.join(meta['choices'])}")
    low, high = meta["low"], meta["high"]
    too_low = low is not None and (value < low or (meta["low_open"] and value == low))
    if too_low or (high is not None and value > high):
        raise ValueError(f"option {f.name} has a bad value {value!r} (allowed: {_range(meta)})")


def _range(meta: dict) -> str:
    def shown(bound) -> str:
        return str(bound) if isinstance(bound, int) else f"{bound:g}"

    low = "" if meta["low"] is None else f"{'>' if meta['low_open'] else '>='} {shown(meta['low'])}"
    high = "" if meta["high"] is None else f"<= {shown(meta['high'])}"
    return " and ".join(part for part in (low, high) if part)


@lru_cache(maxsize=1024)
def resolve_preset(task: str, preset: str | None, scale: int | None, iterations: int | None,
             early_stop: bool | None, stop_rule: str | None, tv_weight: float = 0.0, average_last: int = 0) -> Preset:
    return get_preset(task, preset, scale=scale).with_overrides(
        iterations=iterations, early_stop=early_stop, stop_rule=stop_rule,
        tv_weight=tv_weight or None, average_last=average_last or None)

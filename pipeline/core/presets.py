"""Named settings per task: the paper's, and a small one for CPU demos and tests.

A preset is the network, its input and the fit settings. Command-line flags and manifest
``params`` override single fields (``with_overrides``); the resolved preset is what gets
recorded beside the outputs. No torch import (only ``pipeline.core.config``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import lru_cache

from .config import NET_VARIANTS, EarlyStopConfig, FitConfig, NetConfig

# task -> what it restores (used in help texts and the docs)
TASKS = {
    "denoise": "Gaussian or unknown noise (A = identity)",
    "sr": "super-resolution by an integer scale (A = Lanczos-2 downsampler)",
    "inpaint": "inpainting, missing pixels (A = mask, white = known)",
    "jpeg": "blind JPEG-artifact removal (A = identity, no ground truth)",
    "flash": "flash / no-flash (the flash image is the network input)",
    "invert": "feature inversion (A = activations of an AlexNet/VGG layer)",
    "archive": "archive scans: grain of unknown strength, dust and scratches found and filled in one fit "
               "(A = mask of the detected defects)",
}

INPUT_KINDS = ("noise", "meshgrid", "image")

# The early-stopping rule a task uses when --early-stop is on and --stop-rule is not given, and the
# discrepancy rule's margin: measured by python -m benchmarks.stop_rules on the sigma-25 colour denoising
# suite (docs/experiments/stopping-rule.md). Other tasks keep the moving-variance detector (not measured).
DEFAULT_STOP_RULE = {"denoise": "discrepancy", "archive": "discrepancy"}
DISCREPANCY_MARGIN = 0.95  # stop once the residual RMS is 0.95 sigma-hat (clipping keeps it below sigma)


@dataclass(frozen=True)
class Preset:
    """A named setting of one task: the network, its input (``input_kind``, channels) and the fit."""

    name: str
    task: str
    net: NetConfig
    fit: FitConfig
    input_kind: str = "noise"  # "noise": 32 channels of U(0, 0.1); "meshgrid": 2 channels; "image": the guide
    input_channels: int = 32
    notes: str = ""
    early_stop: EarlyStopConfig = EarlyStopConfig()  # the detector used when early stopping is on

    def with_overrides(self, *, iterations: int | None = None, early_stop: bool | None = None,
                       stop_rule: str | None = None, tv_weight: float | None = None,
                       average_last: int | None = None) -> "Preset":
        """This preset with the command-line overrides applied (None = keep the preset's); ``stop_rule``
        ("wmv", "discrepancy") is the rule early stopping uses when it is on (None: the task's
        ``DEFAULT_STOP_RULE``, else the preset's); ``tv_weight`` (DIP-TV) and ``average_last`` (late
        iterates averaged) go to the fit."""
        fit, detector = self.fit, self.early_stop
        if stop_rule is None and early_stop:
            stop_rule = DEFAULT_STOP_RULE.get(self.task)
        if stop_rule is not None and stop_rule != detector.rule:
            margin = DISCREPANCY_MARGIN if stop_rule == "discrepancy" else 1.0
            detector = replace(detector, rule=stop_rule, margin=margin)
            if fit.early_stop is not None:
                fit = replace(fit, early_stop=replace(fit.early_stop, rule=stop_rule, margin=margin))
        if iterations is not None:
            fit = replace(fit, iterations=int(iterations))
        if tv_weight is not None:
            fit = replace(fit, tv_weight=float(tv_weight))
        if average_last is not None:
            fit = replace(fit, average_last=int(average_last))
        if early_stop is not None:
            fit = replace(fit, early_stop=detector if early_stop else None)
        return replace(self, fit=fit, early_stop=detector)

    def to_dict(self) -> dict:
        return asdict(self)


SKIP = NET_VARIANTS["skip"]
PAPER = {
    "denoise": Preset(
        "denoise", "denoise", SKIP,
        FitConfig(iterations=3000, lr=0.01, reg_noise_std=1 / 30, ema=0.99, backtrack=True),
        notes="Gaussian noise sigma 25; EMA 0.99, backtracking",
    ),
    "denoise-50": Preset(
        "denoise-50", "denoise", SKIP,
        FitConfig(iterations=3000, lr=0.01, reg_noise_std=1 / 20, ema=0.99, backtrack=True),
        notes="Gaussian noise sigma 50",
    ),
    "sr-x4": Preset(
        "sr-x4", "sr", SKIP, FitConfig(iterations=2000, lr=0.01, reg_noise_std=0.03),
        notes="x2 and x4; Lanczos-2 downsampler",
    ),
    "sr-x8": Preset(
        "sr-x8", "sr", SKIP, FitConfig(iterations=4000, lr=0.01, reg_noise_std=0.05),
        notes="x8; Lanczos-2 downsampler",
    ),
    "inpaint-text": Preset(
        "inpaint-text", "inpaint",
        replace(SKIP, channels_skip=(128,) * 5, upsample_mode="nearest"),
        FitConfig(iterations=6000, lr=0.01, reg_noise_std=0.03),
        notes="text masks; 128 skip channels, nearest upsampling",
    ),
    "inpaint-holes": Preset(
        "inpaint-holes", "inpaint", replace(NET_VARIANTS["hourglass"], upsample_mode="nearest"),
        FitConfig(iterations=5000, lr=0.01, reg_noise_std=0.03),
        input_kind="meshgrid", input_channels=2,
        notes="large holes; meshgrid input, no skip connections",
    ),
    "missing-pixels": Preset(
        "missing-pixels", "inpaint", SKIP,
        FitConfig(iterations=11000, lr=0.001, reg_noise_std=0.03, backtrack=True),
        notes="50% of pixels missing; backtracking",
    ),
    "archive": Preset(
        "archive", "archive", SKIP,
        FitConfig(iterations=3000, lr=0.01, reg_noise_std=1 / 30, ema=0.99, backtrack=True,
                  early_stop=EarlyStopConfig(rule="discrepancy", margin=DISCREPANCY_MARGIN)),
        early_stop=EarlyStopConfig(rule="discrepancy", margin=DISCREPANCY_MARGIN),
        notes="the denoise preset, the data term on the pixels no defect covers, stopped by the discrepancy rule",
    ),
    "jpeg": Preset(
        "jpeg", "jpeg", SKIP, FitConfig(iterations=2400, lr=0.01, reg_noise_std=1 / 30, ema=0.99),
        notes="blind JPEG-artifact removal; EMA",
    ),
    "flash": Preset(
        "flash", "flash", SKIP, FitConfig(iterations=600, lr=0.1, reg_noise_std=0.0),
        input_kind="image", input_channels=3, notes="the flash image is the input",
    ),
    "invert": Preset(
        "invert", "invert", NET_VARIANTS["skip6"], FitConfig(iterations=3100, lr=0.001, reg_noise_std=0.0),
        notes="AlexNet/VGG activations; 6 scales",
    ),
}

# The small preset: the same task settings with a tiny network and few iterations, so that a
# fit of a 64x64 crop takes seconds on a laptop CPU. For demos and tests, not for quality.
CPU_SMALL = "cpu-small"
CPU_SMALL_ITERATIONS = 400

DEFAULT_PRESET = {
    "denoise": "denoise", "sr": "sr-x4", "inpaint": "inpaint-text",
    "jpeg": "jpeg", "flash": "flash", "invert": "invert", "archive": "archive",
}

PRESET_NAMES = (*PAPER, CPU_SMALL)


@lru_cache(maxsize=256)  # presets are frozen: a manifest of a million rows resolves a handful
def get_preset(task: str, name: str | None = None, *, scale: int | None = None) -> Preset:
    """The named preset for ``task`` (the task's paper default when ``name`` is None).

    ``cpu-small`` takes the task's paper default and swaps in the tiny network and
    ``CPU_SMALL_ITERATIONS`` iterations.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    default = "sr-x8" if task == "sr" and scale is not None and scale >= 8 else DEFAULT_PRESET[task]
    if name is None:
        return PAPER[default]
    if name == CPU_SMALL:
        base = PAPER[default]
        tiny = replace(NET_VARIANTS["tiny"], upsample_mode=base.net.upsample_mode)
        if base.input_kind == "meshgrid":
            tiny = replace(tiny, channels_skip=(0,) * tiny.depth)
        detector = replace(base.early_stop, window=25, patience=100)  # the base's rule, a shorter window
        fit = replace(base.fit, iterations=CPU_SMALL_ITERATIONS, check_every=50,
                      early_stop=detector if base.fit.early_stop is not None else None)
        return replace(
            base, name=CPU_SMALL, net=tiny, fit=fit, early_stop=detector,
            notes=f"tiny network, {CPU_SMALL_ITERATIONS} iterations: demos and tests",
        )
    if name not in PAPER:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESET_NAMES)}")
    preset = PAPER[name]
    if preset.task != task:
        raise ValueError(f"preset {name!r} is for task {preset.task!r}, not {task!r}")
    return preset

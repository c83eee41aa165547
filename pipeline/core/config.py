"""The frozen configurations of a DIP fit: the network (``NetConfig``), the fit loop
(``FitConfig``) and the early-stopping detector (``EarlyStopConfig``).

Plain dataclasses with no torch import, so that presets, ``Options`` and the ``dip`` command's
help can be built without loading torch. ``pipeline.core.nets``, ``fit`` and ``early_stop``
re-export the class each uses.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace

KINDS = ("skip", "unet", "resnet")
UPSAMPLE_MODES = ("bilinear", "nearest")
DOWNSAMPLE_MODES = ("stride", "avg", "max")
PADS = ("reflection", "zero")
INPUT_KINDS = ("noise", "meshgrid")


@dataclass(frozen=True)
class NetConfig:
    """A DIP generator network (``pipeline.core.nets.build_net``): kind, channels per scale, filters,
    up/down-sampling and padding. Sizes in px, channel counts per layer."""

    kind: str = "skip"  # "skip" | "unet" | "resnet"  (hourglass = skip with channels_skip all 0)
    in_channels: int = 32
    out_channels: int = 3
    channels_down: tuple[int, ...] = (128, 128, 128, 128, 128)  # one entry per scale
    channels_up: tuple[int, ...] = (128, 128, 128, 128, 128)
    channels_skip: tuple[int, ...] = (4, 4, 4, 4, 4)  # 0 = no skip at that scale; unused by unet
    filter_size_down: int = 3
    filter_size_up: int = 3
    filter_size_skip: int = 1
    upsample_mode: str = "bilinear"  # "bilinear" | "nearest"
    downsample_mode: str = "stride"  # "stride" | "avg" | "max"
    pad: str = "reflection"  # "reflection" | "zero"
    need_1x1_up: bool = True
    need_sigmoid: bool = True
    # resnet only:
    resnet_blocks: int = 8
    resnet_channels: int = 64

    def __post_init__(self):
        for name, allowed in (("kind", KINDS), ("upsample_mode", UPSAMPLE_MODES),
                              ("downsample_mode", DOWNSAMPLE_MODES), ("pad", PADS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"NetConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("in_channels", "out_channels", "resnet_blocks", "resnet_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"NetConfig.{name} must be a positive int, got {value!r}")
        for name in ("filter_size_down", "filter_size_up", "filter_size_skip"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1 or value % 2 == 0:
                raise ValueError(f"NetConfig.{name} must be a positive odd int, got {value!r}")
        for name in ("channels_down", "channels_up", "channels_skip"):
            value, lowest = getattr(self, name), 0 if name == "channels_skip" else 1
            if not (isinstance(value, tuple) and value and all(isinstance(c, int) and c >= lowest for c in value)):
                raise ValueError(f"NetConfig.{name} must be a non-empty tuple of ints >= {lowest}, got {value!r}")
        if not len(self.channels_down) == len(self.channels_up) == len(self.channels_skip):
            raise ValueError("NetConfig.channels_down, channels_up and channels_skip need one entry per scale, got "
                             f"{self.channels_down!r}, {self.channels_up!r}, {self.channels_skip!r}")

    @property
    def depth(self) -> int:
        """Number of 2x downsamplings (scales); H and W must be multiples of 2**depth. 0 for resnet."""
        return 0 if self.kind == "resnet" else len(self.channels_down)

    @property
    def min_deepest(self) -> int:
        """Smallest side, in px, the deepest feature map may have (pass it to grid_size).

        BatchNorm fails in training on a single 1x1 map, and reflection padding needs a map larger
        than the pad: so at least 2, and more for reflection-padded filters larger than 3.
        """
        filter_size = 3 if self.kind == "resnet" else self.filter_size_down
        return max(2, (filter_size - 1) // 2 + 1) if self.pad == "reflection" else 2



def skip_config(**overrides) -> NetConfig:
    """The paper's default skip net (5 scales, 128 channels, 4-channel skips), with fields replaced."""
    unknown = sorted(set(overrides) - {f.name for f in fields(NetConfig)})
    if unknown:
        raise ValueError(f"skip_config: unknown NetConfig fields {unknown}")
    return replace(NetConfig(), **overrides)


NET_VARIANTS: dict[str, NetConfig] = {
    "skip": skip_config(),
    "hourglass": skip_config(channels_skip=(0,) * 5),
    "skip6": skip_config(channels_down=(128,) * 6, channels_up=(128,) * 6, channels_skip=(4,) * 6),
    "unet": NetConfig(kind="unet", channels_down=(16, 32, 64, 128, 256),
                      channels_up=(16, 32, 64, 128, 256), channels_skip=(0,) * 5),
    "resnet": NetConfig(kind="resnet"),
    "tiny": skip_config(channels_down=(16, 16, 16), channels_up=(16, 16, 16), channels_skip=(4, 4, 4)),
}


@dataclass(frozen=True)
class EarlyStopConfig:
    """Early stopping without ground truth (``pipeline.core.early_stop``): ``rule`` "wmv" is the
    moving-variance detector (window and patience in iterations); "discrepancy" stops an image once
    the residual ‖A(x) − y‖² / size of its output falls to (margin · σ)², σ its noise level."""

    window: int = 100  # W: outputs in the moving window
    patience: int = 1000  # P: iterations without a new variance minimum before stopping
    start: int = 0  # minima before this iteration do not count
    tolerance: float = 0.0  # a minimum restarts the patience only if this fraction below the last that did
    dry_run: bool = False  # detect and keep the output at the minimum, but run the whole budget (to measure)
    rule: str = "wmv"  # "wmv": ES-WMV; "discrepancy": the residual reaches the noise floor
    margin: float = 1.0  # discrepancy: stop once the residual RMS is at most margin * sigma

    def __post_init__(self):
        if self.rule not in ("wmv", "discrepancy"):
            raise ValueError(f"early-stop rule must be 'wmv' or 'discrepancy', got {self.rule!r}")
        if not self.margin > 0:
            raise ValueError(f"early-stop margin must be > 0, got {self.margin!r}")
        if self.window < 2:
            raise ValueError(f"early-stop window must be >= 2, got {self.window!r}")
        if self.patience < 1:
            raise ValueError(f"early-stop patience must be >= 1, got {self.patience!r}")
        if self.start < 0:
            raise ValueError(f"early-stop start must be >= 0, got {self.start!r}")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"early-stop tolerance must be in [0, 1), got {self.tolerance!r}")


@dataclass(frozen=True)
class FitConfig:
    """The fit loop (``pipeline.core.fit``): iterations, Adam's lr, the input jitter's std (z units),
    the output EMA, backtracking (a PSNR drop in dB against y) and early stopping."""

    iterations: int = 3000
    lr: float = 0.01
    reg_noise_std: float = 0.0  # std of the fresh noise added to z at every iteration
    ema: float | None = None  # output moving average factor (the paper: 0.99), None = off
    backtrack: bool = False  # restore the last good weights when the loss jumps
    backtrack_drop_db: float = 5.0  # a jump = PSNR against y falls by more than this
    max_backtracks: int = 50
    check_every: int = 100  # iterations between checks: history, backtracking, early stop
    early_stop: EarlyStopConfig | None = None
    tv_weight: float = 0.0  # DIP-TV (Liu et al. 2019): + tv_weight * the mean TV of the output, 0 = off
    average_last: int = 0  # the output is the mean of the last N iterations' outputs, 0 = off

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations!r}")
        if not self.lr > 0:
            raise ValueError(f"lr (learning rate) must be > 0, got {self.lr!r}")
        if not self.reg_noise_std >= 0:
            raise ValueError(f"reg_noise_std must be >= 0, got {self.reg_noise_std!r}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"ema must be in (0, 1) or None, got {self.ema!r}")
        if self.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {self.check_every!r}")
        if not self.tv_weight >= 0:
            raise ValueError(f"tv_weight must be >= 0, got {self.tv_weight!r}")
        if self.average_last < 0:
            raise ValueError(f"average_last must be >= 0, got {self.average_last!r}")


# Fields added after result hashes were first written (``pipeline.batch.manifest.config_hash``),
# with the default that reproduces the behaviour from before them. While a field has that value it
# is left out of the hash (``stable_dict``), so adding an option does not make every rerun redo
# every image. A new field of a hashed dataclass is added here with its default. A field removed
# leaves the hash of the rows that had it at its default unchanged (the warm starts, removed on
# 2026-12-06: every row fitted without one keeps its hash, so a rerun refits nothing).
ADDED_LATER: dict[str, dict[str, object]] = {
    "EarlyStopConfig": {"rule": "wmv", "margin": 1.0},
    "FitConfig": {"tv_weight": 0.0, "average_last": 0},
    "Options": {"stop_rule": None, "defect_sensitivity": 1.0, "mask_mode": "combine", "restarts": 1,
                "tv_weight": 0.0, "average_last": 0},
}


def stable_dict(value):
    """``dataclasses.asdict`` of ``value`` (recursively), less the ``ADDED_LATER`` fields at their
    default: the form that configuration hashes are taken of."""
    if is_dataclass(value) and not isinstance(value, type):
        later = ADDED_LATER.get(type(value).__name__, {})
        return {f.name: stable_dict(getattr(value, f.name)) for f in fields(value)
                if not (f.name in later and getattr(value, f.name) == later[f.name])}
    if isinstance(value, (list, tuple)):
        return [stable_dict(v) for v in value]
    if isinstance(value, dict):
        return {k: stable_dict(v) for k, v in value.items()}
    return value

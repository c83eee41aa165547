"""How much device memory a DIP fit needs at its peak, estimated before it starts.

``estimate_fit_bytes`` adds up what ``pipeline.core.fit.fit`` keeps on the device: the parameters
with their gradients, Adam moments and backtracking snapshot; the activations autograd keeps
for the backward pass; the network input; the image-sized tensors; the early-stopping ring
buffer; and a fixed allowance for the CUDA runtime. ``check_fits`` compares an estimate with
``available_bytes`` and refuses a fit that cannot fit. The activations are counted once per
network configuration by running the real network on the meta device (no memory, no compute).
``memory_needed``, ``memory_budget`` and ``choose_tile`` apply this to one image's request: the
whole image when it fits, else the largest tile that does. ``choose_tile`` reads the budget once
(``fit_budget``), before the restore allocates anything, and leaves room for what the restore holds
besides the fits (``image_work_parts``: the defect detection, the noise estimate, the mask, the
tiles' accumulators, the restarts' outputs); the tiles are then fitted whole, never tiled again.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import replace
from functools import lru_cache

import torch

from .engine import EngineConfig
from .images import Picture
from .nets import NetConfig, build_net, count_parameters, grid_size
from .options import Options
from .tiles import balanced_tile, largest_tile

GiB = 2**30
MiB = 2**20

# Autograd keeps more than the leaf modules' outputs: conv, BatchNorm and LeakyReLU save their
# inputs (the outputs of torch.cat among them, which no module returns), the backward pass holds
# activation gradients for a while, and the caching allocator rounds blocks up. Measured on the
# CPU (torch 2.13, paper skip net, 128x128 grid, one Adam step): peak = 1.11x the leaf outputs
# in fp32, 1.63x under bf16 autocast (where the CPU keeps some fp32 copies). Not measured on CUDA.
ACTIVATION_SAFETY_FACTOR = 1.5

# The CUDA context if it did not exist yet when the free memory was read, cuDNN / cuBLAS
# workspaces and kernels loaded at first use, torch.compile's autotuning. A guess, to be
# calibrated against torch.cuda.max_memory_reserved on a real fit.
DEVICE_OVERHEAD_BYTES = 512 * MiB

ADAM_FP32_COPIES = 4  # weight, gradient, exp_avg, exp_avg_sq
BACKTRACK_FP32_COPIES = 3  # the snapshot: weights, exp_avg, exp_avg_sq
NET_INPUT_COPIES = 3  # z, the jitter buffer, z + jitter
IMAGE_COPIES = 3  # the output, its moving average (EMA), the observation (at most image-sized)

# Host memory of the work on the whole image besides the fits, in float32 [H, W] planes of the
# observation (``image_work_parts``). Measured as the rise of the resident memory (psutil polled
# every 20 ms, and a forked child's ru_maxrss) over a synthetic 4000x3000 16-bit scan
# (``python -m benchmarks.scan_memory``'s make_scan), torch 2.13, numpy 2.4, scikit-image 0.26:
# ``archive_mask`` (``detect_defects``: a float64 copy of the image, its luminance, the top-hats and
# their scores) +1451 MiB on RGB = 31.7 planes, +1335 MiB on grey = 29.2 planes, 85 MiB left after
# it (the mask and the allocator's rest); ``noise_sigma_of`` one channel at a time +529 MiB = 11.6
# planes (all at once: +777 MiB). Rounded up.
DETECTOR_PLANES = 36
NOISE_PLANES = 13
WORK_TERMS = ("detect", "noise", "mask", "accumulators", "restarts")


class FitTooLarge(RuntimeError):
    """The estimated peak memory of a fit exceeds the device's budget, and tiling is off."""


def estimate_fit_parts(net_cfg: NetConfig, height: int, width: int, *, in_channels: int, out_channels: int,
                       bf16: bool = False, early_stop_window: int | None = None,
                       backtrack: bool = True) -> dict[str, int]:
    """The terms of ``estimate_fit_bytes``, in bytes: parameters, activations, net_input, images,
    early_stop (0 without a window) and overhead."""
    for name, value in (("height", height), ("width", width), ("in_channels", in_channels),
                        ("out_channels", out_channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"estimate_fit_bytes: {name} must be a positive int, got {value!r}")
    if early_stop_window is not None and (not isinstance(early_stop_window, int) or early_stop_window < 1):
        raise ValueError(f"estimate_fit_bytes: early_stop_window must be a positive int or None, "
                         f"got {early_stop_window!r}")
    cfg = replace(net_cfg, in_channels=in_channels, out_channels=out_channels)
    parameters, per_grid_pixel = _net_counts(cfg)
    gh, gw = grid_size(height, width, cfg.depth, cfg.min_deepest)
    image = out_channels * height * width * 4  # one fp32 image [1, C, H, W]
    copies = ADAM_FP32_COPIES + (BACKTRACK_FP32_COPIES if backtrack else 0)
    return {
        # fp32 copies, plus the bf16 weights autocast caches for the forward pass
        "parameters": parameters * (4 * copies + (2 if bf16 else 0)),
        "activations": math.ceil(per_grid_pixel * gh * gw * (2 if bf16 else 4) * ACTIVATION_SAFETY_FACTOR),
        "net_input": NET_INPUT_COPIES * in_channels * gh * gw * 4,
        "images": IMAGE_COPIES * image,
        "early_stop": (early_stop_window or 0) * image,  # the ring buffer [window, C, H, W], fp32
        "overhead": DEVICE_OVERHEAD_BYTES,
    }


def estimate_fit_bytes(net_cfg: NetConfig, height: int, width: int, *, in_channels: int, out_channels: int,
                       bf16: bool = False, early_stop_window: int | None = None, backtrack: bool = True) -> int:
    """Estimated peak device memory, in bytes, of fitting ``net_cfg`` to an image of height x width px.

    (height, width) is the size the network outputs (for super-resolution: the high-resolution
    image); the network runs on grid_size(height, width, depth, min_deepest). in_channels and
    out_channels replace the config's (the input kind's and the image's channels). bf16: under
    bf16 autocast (the activations take 2 bytes per value). early_stop_window: the detector's
    window W, None without early stopping. backtrack: the fit keeps a snapshot of the weights and
    Adam moments. An estimate, not a bound: see ACTIVATION_SAFETY_FACTOR and DEVICE_OVERHEAD_BYTES.
    """
    return sum(estimate_fit_parts(net_cfg, height, width, in_channels=in_channels, out_channels=out_channels,
                                  bf16=bf16, early_stop_window=early_stop_window, backtrack=backtrack).values())


@lru_cache(maxsize=64)
def _net_counts(cfg: NetConfig) -> tuple[int, float]:
    """(parameters, activation values per grid pixel) of the net for cfg, from one forward pass on
    the meta device at the smallest grid, summing the outputs of the leaf modules. Padding makes a
    small grid count slightly more per pixel than a large one: the estimate errs high."""
    gh, gw = grid_size(1, 1, cfg.depth, cfg.min_deepest)
    with torch.device("meta"):
        net = build_net(cfg).train()
        total = 0

        def count(module, inputs, output):
            nonlocal total
            total += output.numel()

        for module in net.modules():
            if next(module.children(), None) is None:
                module.register_forward_hook(count)
        net(torch.empty(1, cfg.in_channels, gh, gw))
    return count_parameters(net), total / (gh * gw)


def available_bytes(device: str | torch.device) -> int:
    """Free memory on ``device``, in bytes: CUDA's free device memory; on the CPU, the kernel's
    MemAvailable (else the free physical pages)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        raise ValueError(f"available_bytes: no memory query for device {str(device)!r} (only cuda and cpu)")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident memory now, in bytes (Linux: /proc/self/statm; elsewhere its peak so
    far, an upper bound)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def check_fits(estimate: int, budget: int, what: str) -> None:
    """Raise FitTooLarge when ``estimate`` bytes exceed ``budget`` bytes; ``what`` names the input
    in the message (e.g. "4000x3000 image")."""
    if estimate > budget:
        raise FitTooLarge(f"{what}: the fit needs about {estimate / GiB:.1f} GiB of device memory but "
                          f"{budget / GiB:.1f} GiB is available, and tiling is off; turn tiling on "
                          "or restore a smaller image")


# -----------------------------------------------------------------------------
# one image: the whole of it, or tiles, decided once


def fit_budget(options: Options) -> int:
    """Bytes the restore of one image may still allocate: read once, before it allocates anything.

    CUDA: ``memory_budget`` (device memory; the whole-image work lives on the host). The CPU:
    ``memory_budget_gb`` counts the whole process, so what the process holds already (the
    interpreter, torch, the decoded inputs: ``resident_bytes``) comes off it; without one, the
    kernel's MemAvailable, which leaves that out already. Negative when nothing is left.
    """
    if torch.device(options.device).type != "cpu" or not options.memory_budget_gb:
        return memory_budget(options)
    return memory_budget(options) - resident_bytes()


def image_work_parts(observed: Picture, options: Options) -> dict[str, int]:
    """Host bytes that ``pipeline.core.restore.restore`` allocates for ``observed`` [1, C, H, W]
    besides its fits, by term (the decoded inputs are held already: see ``fit_budget``):

    - detect (archive): the defect detector's peak, before the fits and freed before they start;
    - noise: σ̂ of the whole image, one channel at a time, before the fits (freed too);
    - mask (archive): the mask found, [1, 1, H, W] float32, kept alongside every fit;
    - accumulators (tiled): total [1, C, sH, sW] and weight_sum [1, 1, sH, sW], float32, alongside
      every tile's fit (total becomes the blended image, divided in place; s: the SR scale);
    - restarts (N > 1): the N outputs [1, C, sH, sW] kept for the average, and their stack.
    """
    s = options.scale if options.task == "sr" and options.scale else 1
    plane = observed.height * observed.width * 4  # one float32 [H, W] plane of the observation
    archive = options.task == "archive"
    return {
        "detect": DETECTOR_PLANES * plane if archive else 0,
        "noise": NOISE_PLANES * plane,
        "mask": plane if archive else 0,
        "accumulators": (observed.channels + 1) * plane * s * s,
        "restarts": 2 * options.restarts * observed.channels * plane * s * s if options.restarts > 1 else 0,
    }


def choose_tile(observed: Picture, options: Options) -> int | None:
    """None when the whole image fits the memory budget; else the tile side (observation px) to
    use: as few tiles as the largest side whose fit fits allows, each as small as that count allows
    (``balanced_tile``), beside the whole-image work (``image_work_parts``, on the CPU;
    on CUDA that is host memory, apart from the device's budget).

    Reads the budget once (``fit_budget``): call it before allocating anything, and fit each tile
    whole (a tile is never tiled again). Raises FitTooLarge naming the sizes when the work before
    the fits does not fit, or the whole image does not and tiling is off or cannot help.
    """
    # 1. The budget, read once, and the terms of the whole-image work.
    budget = fit_budget(options)
    on_host = torch.device(options.device).type == "cpu"
    parts = image_work_parts(observed, options) if on_host else dict.fromkeys(WORK_TERMS, 0)
    preset = options.resolve()
    what = f"{observed.width}x{observed.height} image ({options.task}, preset {preset.name})"
    # 2. The detection and the noise estimate run before any fit, and free what they took.
    before = parts["mask"] + max(parts["detect"], parts["noise"])
    if before > budget:
        found = "defects and noise level" if parts["detect"] else "noise level"
        raise FitTooLarge(f"{what}: finding its {found} needs about {_gib(before)} but "
                          f"{_budget_text(options, budget)}; raise the memory budget or restore a smaller image")
    # 3. The whole image in one fit, beside the mask and the restarts' outputs.
    needed = memory_needed(observed, options) + parts["mask"] + parts["restarts"]
    if needed <= budget:
        return None
    if not options.tiling or options.task in ("invert", "flash"):
        check_fits(needed, budget, what)
    # 4. The largest tile whose fit fits beside the accumulators too.
    held = parts["mask"] + parts["restarts"] + parts["accumulators"]
    h, w = observed.height, observed.width

    def fits(side: int) -> bool:
        return memory_needed(observed, options, min(side, h), min(side, w)) + held <= budget

    smallest = 2 ** preset.net.depth * 2
    if not fits(smallest):
        tile = memory_needed(observed, options, min(smallest, h), min(smallest, w))
        raise FitTooLarge(f"{what}: even a {smallest}x{smallest} tile needs about {_gib(tile)} beside "
                          f"{_gib(held)} for the whole image (mask, accumulators, restarts), but "
                          f"{_budget_text(options, budget)}; raise the memory budget or restore a smaller image")
    return balanced_tile(h, w, largest_tile(fits, smallest, max(h, w)), lo=smallest)  # as many tiles, smaller


def memory_needed(observed: Picture, options: Options, height: int | None = None, width: int | None = None) -> int:
    """Estimated peak bytes of the fit of ``observed`` (or of a height x width piece of it)."""
    preset = options.resolve()
    scale = options.scale if options.task == "sr" and options.scale else 1
    h, w = height or observed.height, width or observed.width
    return estimate_fit_bytes(preset.net, h * scale, w * scale, in_channels=preset.input_channels,
                              out_channels=observed.channels, bf16=EngineConfig.fast(options.device).autocast_bf16,
                              early_stop_window=preset.fit.early_stop.window if preset.fit.early_stop else None,
                              backtrack=preset.fit.backtrack)


def memory_budget(options: Options) -> int:
    """Bytes a fit may use: ``memory_budget_gb``, else what the device has free now."""
    return int(options.memory_budget_gb * GiB) if options.memory_budget_gb else available_bytes(options.device)


def _budget_text(options: Options, budget: int) -> str:
    """The budget left, in words: '1.20 GiB is left of the 2.00 GiB budget' (the process holds the
    rest) or '1.20 GiB is available'."""
    if torch.device(options.device).type == "cpu" and options.memory_budget_gb:
        return (f"{_gib(budget)} is left of the {options.memory_budget_gb:.2f} GiB budget "
                "(this process holds the rest)")
    return f"{_gib(budget)} is available"


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"

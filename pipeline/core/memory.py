"""How much device memory a DIP fit needs at its peak, estimated before it starts.

``estimate_fit_bytes`` adds up what ``pipeline.core.fit.fit`` keeps on the device: the parameters
with their gradients, Adam moments and backtracking snapshot; the activations autograd keeps
for the backward pass; the network input; the image-sized tensors; the early-stopping ring
buffer; and a fixed allowance for the CUDA runtime. ``check_fits`` compares an estimate with
``available_bytes`` and refuses a fit that cannot fit. The activations are counted once per
network configuration by running the real network on the meta device (no memory, no compute).
``memory_needed``, ``memory_budget`` and ``choose_tile`` apply this to one image's request: the
whole image when it fits, else the largest tile that does.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from functools import lru_cache

import torch

from .engine import EngineConfig
from .images import Picture
from .nets import NetConfig, build_net, count_parameters, grid_size
from .options import Options
from .tiles import largest_tile

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


def check_fits(estimate: int, budget: int, what: str) -> None:
    """Raise FitTooLarge when ``estimate`` bytes exceed ``budget`` bytes; ``what`` names the input
    in the message (e.g. "4000x3000 image")."""
    if estimate > budget:
        raise FitTooLarge(f"{what}: the fit needs about {estimate / GiB:.1f} GiB of device memory but "
                          f"{budget / GiB:.1f} GiB is available, and tiling is off; turn tiling on "
                          "or restore a smaller image")


def choose_tile(observed: Picture, options: Options) -> int | None:
    """None when the whole image fits the memory budget; else the tile side (observation px) to
    use, the largest whose fit fits. Raises FitTooLarge when tiling is off or cannot help."""
    budget = memory_budget(options)
    needed = memory_needed(observed, options)
    if needed <= budget:
        return None
    preset = options.resolve()
    what = f"{observed.width}x{observed.height} image ({options.task}, preset {preset.name})"
    if not options.tiling or options.task in ("invert", "flash"):
        check_fits(needed, budget, what)
    smallest = 2 ** preset.net.depth * 2
    if memory_needed(observed, options, smallest, smallest) > budget:
        check_fits(memory_needed(observed, options, smallest, smallest), budget,
                   f"even a {smallest}x{smallest} tile of the {what}")
    return largest_tile(lambda side: memory_needed(observed, options, side, side) <= budget, smallest,
                        max(observed.height, observed.width))


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

"""Each layer kind of the paper's denoising net, timed alone at the size it runs at in a fit.

``benchmarks.profile_step`` splits a whole iteration by kernel; this times one layer at a time, forward
and backward, in the fast engine's precision and memory format (bf16 autocast, channels_last)
and in the plain one's (fp32, contiguous), and gives the convolutions' achieved TFLOP/s. It
answers questions such as: does the merge convolution, which sees 128 + 4 = 132 input channels
(not a multiple of 8, which tensor-core kernels want), run slower than the same convolution with
136? The top level of the net runs at the image size, so its layers dominate.

Eager PyTorch (torch.compile hands convolutions to cuDNN as they are), timed with
torch.utils.benchmark. The DIP core is not needed.

    python -m benchmarks.layer_speed                     # CUDA, 512x512
    python -m benchmarks.layer_speed --size 32           # CPU smoke test

Writes ``benchmarks/results/layer_speed/<device>.json``.
"""

from __future__ import annotations

import argparse
import copy
import platform
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import RESULTS, device_name, write_results
from benchmarks.fit_speed import peak_tflops


def conv(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.ReflectionPad2d(k // 2), nn.Conv2d(c_in, c_out, k, stride)) if k > 1 \
        else nn.Conv2d(c_in, c_out, 1)


def cases(size: int) -> list[tuple[str, nn.Module, int, int]]:
    """(name, layer, input channels, input side): the net's top level runs at the image size."""
    half = size // 2
    return [
        ("merge conv3x3 132->128 (the net's)", conv(132, 128, 3), 132, size),
        ("merge conv3x3 136->128 (aligned to 8)", conv(136, 128, 3), 136, size),
        ("conv3x3 128->128", conv(128, 128, 3), 128, size),
        ("down conv3x3/2 32->128", conv(32, 128, 3, 2), 32, size),
        ("down conv3x3/2 128->128", conv(128, 128, 3, 2), 128, size),
        ("skip conv1x1 32->4", conv(32, 4, 1), 32, size),
        ("skip conv1x1 128->4", conv(128, 4, 1), 128, half),
        ("conv1x1 128->128", conv(128, 128, 1), 128, size),
        ("output conv1x1 128->3", conv(128, 3, 1), 128, size),
        ("upsample x2 bilinear", nn.Upsample(scale_factor=2, mode="bilinear"), 128, half),
        ("batchnorm + leakyrelu", nn.Sequential(nn.BatchNorm2d(128), nn.LeakyReLU(0.2)), 128, size),
        ("batchnorm 132", nn.BatchNorm2d(132), 132, size),
        ("concat 4 + 128", None, 128, size),
    ]


def measure(layer: nn.Module | None, channels: int, side: int, device: torch.device, fast: bool,
            min_run_time: float) -> dict:
    memory_format = torch.channels_last if fast else torch.contiguous_format
    x = torch.randn(1, channels, side, side, device=device).contiguous(memory_format=memory_format)
    x.requires_grad_(True)
    if layer is None:  # the skip connection's concatenation
        skip = torch.randn(1, 4, side, side, device=device, requires_grad=True)
        layer = lambda t: torch.cat([skip, t], dim=1)  # noqa: E731  (a one-line helper, named for the asserts)
    else:
        layer = copy.deepcopy(layer).to(device).train()  # each engine its own copy (memory format)
        if fast:
            layer = layer.to(memory_format=memory_format)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast and device.type == "cuda"):
        grad = torch.ones_like(layer(x))

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast and device.type == "cuda"):
            out = layer(x)
        out.backward(grad)

    with FlopCounterMode(display=False) as counter:
        step()
    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    seconds = timer.blocked_autorange(min_run_time=min_run_time).median  # CUDA: Timer synchronises
    flops = counter.get_total_flops()
    return {"ms": round(seconds * 1000, 4), "gflop": round(flops / 1e9, 3),
            "tflops": round(flops / seconds / 1e12, 2) if flops else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=None, help="image side (default 512 on CUDA, 32 on the CPU)")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per layer and engine")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    size = args.size or (512 if device.type == "cuda" else 32)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the fast engine runs
    name = device_name(device)
    peaks = peak_tflops(name.description)
    rows = []
    for label, layer, channels, side in cases(size):
        row = {"layer": label, "input": [1, channels, side, side]}
        for engine, fast in (("fast", True), ("plain", False)):
            row[engine] = measure(layer, channels, side, device, fast, args.min_run_time)
        if peaks and row["fast"]["tflops"]:
            row["fast"]["mfu_bf16"] = round(row["fast"]["tflops"] / peaks["bf16"], 3)
        rows.append(row)
        print(f"{label:>40}: fast {row['fast']['ms']} ms ({row['fast']['tflops']} TFLOP/s), "
              f"plain {row['plain']['ms']} ms ({row['plain']['tflops']} TFLOP/s)", flush=True)
    record = {"size": size, "layers": rows, "python": platform.python_version()}
    path = write_results("layer_speed", name, record, root=args.results_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

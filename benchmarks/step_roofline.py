"""Where one iteration of the paper's denoising fit goes: FLOPs and memory traffic per aten op.

Runs one forward + backward of the paper's skip net at --size on the meta device (no GPU, no
data) under a dispatch mode that records every aten op: its FLOPs (torch.utils.flop_counter's
formulas) and the bytes it reads and writes if nothing is fused (inputs + outputs, at
--bytes-per-value: 2 for bf16 activations). Each op's time on a device is bounded below by
max(FLOPs / peak, bytes / bandwidth); the sum is the roofline of the unfused step, the table
says which ops it comes from. Defaults: an H200's datasheet, 989 TFLOP/s dense bf16 and 4.8 TB/s.

    python -m benchmarks.step_roofline                 # 512x512
    python -m benchmarks.step_roofline --size 256

Writes ``benchmarks/results/step_roofline-<size>/meta.json`` (the meta device: nothing is computed).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from benchmarks.common import RESULTS, Device, write_results
from pipeline.core.nets import build_net, crop_center, grid_size
from pipeline.core.presets import PAPER


class OpLog(TorchDispatchMode):
    """Per aten op (overload packet): calls, FLOPs, values read and written."""

    def __init__(self):
        super().__init__()
        self.ops = defaultdict(lambda: {"calls": 0, "flops": 0, "values": 0})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        row = self.ops[str(packet).split(".")[-1]]
        row["calls"] += 1
        if packet in flop_registry:
            row["flops"] += flop_registry[packet](*args, **kwargs, out_val=out)
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        row["values"] += sum(t.numel() for t in tensors)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--bytes-per-value", type=float, default=2.0, help="2 for bf16 activations")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--bandwidth-tbs", type=float, default=4.8)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    cfg = PAPER["denoise"].net
    with torch.device("meta"):
        net = build_net(cfg).train()
        z = torch.empty(1, cfg.in_channels, *grid_size(args.size, args.size, cfg.depth))
        y = torch.empty(1, cfg.out_channels, args.size, args.size)
    with OpLog() as log:
        loss = F.mse_loss(crop_center(net(z), args.size, args.size), y)
        loss.backward()
    rows = []
    for name, row in log.ops.items():
        seconds_compute = row["flops"] / (args.peak_tflops * 1e12)
        seconds_memory = row["values"] * args.bytes_per_value / (args.bandwidth_tbs * 1e12)
        rows.append({"op": name, **row, "gbytes": round(row["values"] * args.bytes_per_value / 1e9, 3),
                     "bound_ms": round(max(seconds_compute, seconds_memory) * 1e3, 4),
                     "bound": "compute" if seconds_compute > seconds_memory else "memory"})
    rows.sort(key=lambda r: -r["bound_ms"])
    total_ms = sum(r["bound_ms"] for r in rows)
    flops = sum(r["flops"] for r in rows)
    print(f"{args.size}x{args.size}: {flops / 1e12:.3f} TFLOP, {sum(r['gbytes'] for r in rows):.2f} GB unfused, "
          f"roofline {total_ms:.2f} ms per iteration ({1e3 / total_ms:.0f} it/s at most without fusion)")
    print(f"{'op':<40} {'calls':>6} {'GFLOP':>9} {'GB':>7} {'ms':>8}  bound")
    for r in rows[:15]:
        print(f"{r['op']:<40} {r['calls']:>6} {r['flops'] / 1e9:>9.1f} {r['gbytes']:>7.3f} "
              f"{r['bound_ms']:>8.4f}  {r['bound']}")
    device = Device("meta", f"meta device (shapes only), bounded at {args.peak_tflops:g} TFLOP/s and "
                            f"{args.bandwidth_tbs:g} TB/s")
    path = write_results(f"step_roofline-{args.size}", device,
                         {"size": args.size, "bytes_per_value": args.bytes_per_value, "peak_tflops": args.peak_tflops,
                          "bandwidth_tbs": args.bandwidth_tbs, "tflop": round(flops / 1e12, 4),
                          "roofline_ms": round(total_ms, 3), "ops": rows}, root=args.results_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

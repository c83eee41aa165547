"""Where a fast-engine iteration spends its time: a torch.profiler trace of the paper's denoising fit.

``benchmarks.fit_speed`` says how fast an iteration is; this says why. A first fit of --warmup
iterations compiles (and records the CUDA graphs); a second fit of the same net runs
--iterations under ``torch.profiler``. Written out:

- the wall time per iteration, and the device's busy time per iteration (the sum of its kernels'
  times: a busy fraction well below 1 means the step waits on the host: launches, syncs);
- kernel time per category (convolution, upsampling, BatchNorm, fused elementwise from the
  compiler, optimizer, copies, ...; by kernel name), per iteration and as a share;
- the 40 operators and kernels with the most device time (self time, per iteration).

With --trace DIR, the Chrome trace too (gzipped, in DIR; open it in https://ui.perfetto.dev).
The DIP core only (no Ray, fsspec or Click).

    python -m benchmarks.profile_step                              # CUDA, 512x512
    python -m benchmarks.profile_step --size 64 --iterations 5     # CPU smoke test

Writes ``benchmarks/results/profile_step/<device>.json`` (``profile_step-align<N>`` with
--align-channels N other than 1).
"""

from __future__ import annotations

import argparse
import gzip
import platform
import re
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import RESULTS, device_name, write_results
from benchmarks.fit_speed import clean_image
from pipeline.core.engine import EngineConfig
from pipeline.core.fit import fit
from pipeline.core.nets import build_net, grid_size, make_input
from pipeline.core.operators import Denoise
from pipeline.core.presets import PAPER
from pipeline.core.synthetic import synthesize

# Kernel name -> category, first match wins (cuDNN/CUTLASS convolution kernels have many names).
CATEGORIES = [
    ("upsample", r"upsample|interpolate"),
    ("batch_norm", r"batch_norm|batchnorm|bn_fw|bn_bw|welford"),
    ("convolution", r"conv|cudnn|implicit_gemm|xmma|cutlass|sm\d+_|gemm|wgrad|dgrad|fprop"),
    ("optimizer", r"adam|foreach|multi_tensor"),
    ("compiled_elementwise", r"^triton_"),
    ("copy_and_fill", r"memcpy|memset|copy|fill|cat"),
    ("reduction", r"reduce|sum|mean"),
]


def category(name: str) -> str:
    lowered = name.lower()
    return next((label for label, pattern in CATEGORIES if re.search(pattern, lowered)), "other")


def device_time_us(event) -> float:
    """Self device time of a profiler event in µs (the attribute was renamed in torch 2.4)."""
    for attribute in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, attribute):
            return float(getattr(event, attribute))
    return 0.0


def run_fit(net, z, iterations: int, noisy, clean, device, engine):
    config = replace(PAPER["denoise"].fit, iterations=iterations, check_every=max(1, iterations // 4))
    return fit(net, z, Denoise(), noisy, config, reference=clean, device=device, engine=engine)


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--size", type=int, default=None, help="image side in px (default 512 on CUDA, 64 on the CPU)")
    parser.add_argument("--warmup", type=int, default=50, help="iterations of the compiling first fit")
    parser.add_argument("--iterations", type=int, default=100, help="profiled iterations of the second fit")
    parser.add_argument("--align-channels", type=int, default=None,
                        help="the engine's align_channels (default: fast's)")
    parser.add_argument("--trace", type=Path, default=None, help="also write the Chrome trace (gzipped) to this folder")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    args.size = args.size or (512 if device.type == "cuda" else 64)
    engine = EngineConfig.fast(device)
    if args.align_channels is not None:
        engine = replace(engine, align_channels=args.align_channels)
    picture = clean_image(args.size)
    clean, noisy = picture.pixels, synthesize(picture, "noise:25", seed=0).observed.pixels

    preset = PAPER["denoise"]
    z = make_input("noise", preset.input_channels, *grid_size(args.size, args.size, preset.net.depth),
                   torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = build_net(preset.net)
    # The same net twice: the first fit compiles and records the CUDA graphs, the second (profiled)
    # replays them (a new net would re-record its graphs under the profiler).
    run_fit(net, z, args.warmup, noisy, clean, device, engine)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        result = run_fit(net, z, args.iterations, noisy, clean, device, engine)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    wall = time.perf_counter() - started
    n = result.iterations

    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    by_category: dict[str, float] = defaultdict(float)
    for e in kernels:
        by_category[category(e.key)] += device_time_us(e)
    busy = sum(by_category.values())
    ranked = sorted(events, key=device_time_us if kernels else (lambda e: e.self_cpu_time_total), reverse=True)
    name = device_name(device)
    record = {
        "size": args.size, "engine": asdict(engine),
        "iterations": n, "wall_ms_per_iteration": round(wall * 1000 / n, 3),
        "fit_it_per_s": round(result.iterations_per_second, 2),
        "device_busy_ms_per_iteration": round(busy / 1000 / n, 3) if kernels else None,
        "device_busy_fraction": round(busy / 1e6 / wall, 3) if kernels else None,
        "categories_ms_per_iteration": {k: round(v / 1000 / n, 4) for k, v in
                                        sorted(by_category.items(), key=lambda kv: -kv[1])},
        "categories_share": {k: round(v / busy, 3) for k, v in by_category.items()} if busy else {},
        "top": [{"name": e.key[:160], "calls_per_iteration": round(e.count / n, 2),
                 "device_ms_per_iteration": round(device_time_us(e) / 1000 / n, 4),
                 "cpu_self_ms_per_iteration": round(e.self_cpu_time_total / 1000 / n, 4),
                 "is_kernel": e.device_type == torch.autograd.DeviceType.CUDA}
                for e in ranked[:40]],
        "python": platform.python_version(),
    }
    suffix = "" if engine.align_channels == 1 else f"-align{engine.align_channels}"
    path = write_results(f"profile_step{suffix}", name, record, root=args.results_dir)
    if args.trace:  # beside the results, not in them: benchmarks/results holds only results files
        args.trace.mkdir(parents=True, exist_ok=True)
        raw = args.trace / f"profile_step{suffix}_{name.slug}_trace.json"
        prof.export_chrome_trace(str(raw))
        with raw.open("rb") as source, gzip.open(f"{raw}.gz", "wb") as target:
            shutil.copyfileobj(source, target)
        raw.unlink()
    print(f"{name.description} {args.size}x{args.size}: {record['wall_ms_per_iteration']} ms/iteration wall, "
          f"device busy {record['device_busy_ms_per_iteration']} ms ({record['device_busy_fraction']})")
    for label, ms in record["categories_ms_per_iteration"].items():
        print(f"  {label:>22}: {ms} ms/iteration")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

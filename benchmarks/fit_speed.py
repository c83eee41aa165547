"""Fit speed: the fast engine against the plain one on the paper's denoising network.

The same image (F16, resized to --size, Gaussian noise sigma 25 via ``synthesize``), seed and
iterations for both engines; the paper's ``denoise`` preset (skip net, EMA, backtracking):

- plain: ``EngineConfig.plain()``: fp32, eager, default Adam, a host sync every iteration (the
  reference code's loop);
- fast:  ``EngineConfig.fast(device)``: what ``fit`` uses by default;
- on CUDA, ablations of --ablation-iterations each (--ablations picks them): a second fast fit
  in the same process (a new net, as each image of a batch), fits at two new sizes (--size + 32,
  + 64: what a batch of mixed sizes pays per new size; compare seconds with the 2nd fit's), the
  fast engine with the merge
  convolutions' input channels padded to a multiple of 8 (``align_channels``), and the fast
  engine without CUDA graphs, without torch.compile (and so without graphs), without bf16
  autocast.

For each: iterations per second (steady: from the first history entry, at 10% of the
iterations, to the last, so compilation and warm-up are left out; and total, all included), the
final PSNR against the clean image (dB), peak memory (CUDA: torch.cuda.max_memory_allocated;
CPU: the process's ru_maxrss, which never falls, so the later engine's includes the earlier's),
and the model FLOP utilisation: FLOPs of one forward + backward (counted by
torch.utils.flop_counter on the meta device) x steady it/s / the device's peak (null where the
peak is not in PEAK_TFLOPS, e.g. the CPU).

The DIP core only (torch, numpy, Pillow, scikit-image; no Ray, fsspec or Click).

    python -m benchmarks.fit_speed                               # CUDA: 512x512, 300 iterations + ablations
    python -m benchmarks.fit_speed --size 64 --iterations 20     # CPU smoke test (minutes on 2 cores)

Writes ``benchmarks/results/fit_speed/<device>.json``.
"""

from __future__ import annotations

import argparse
import platform
import resource
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import RESULTS, centre_square, device_name, sample, write_results
from pipeline.core.engine import EngineConfig
from pipeline.core.fit import fit
from pipeline.core.images import Picture
from pipeline.core.memory import estimate_fit_bytes
from pipeline.core.metrics import psnr
from pipeline.core.nets import build_net, crop_center, grid_size, make_input
from pipeline.core.operators import Denoise
from pipeline.core.presets import PAPER
from pipeline.core.synthetic import synthesize

IMAGE = "samples/denoising/F16_GT.png"  # under ../shared/data
# Dense peak TFLOP/s by a substring of torch.cuda.get_device_name (NVIDIA's datasheets, SXM).
# tf32: what cuDNN uses for "fp32" convolutions while torch.backends.cudnn.allow_tf32 is on (the default).
PEAK_TFLOPS = {
    "H100": {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0},
    "H200": {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0},
}


def peak_tflops(description: str) -> dict | None:
    """The datasheet peaks of a device by a substring of its description ("NVIDIA H200 (139.8 GiB)")."""
    return next((peaks for key, peaks in PEAK_TFLOPS.items() if key in description), None)


def clean_image(size: int) -> Picture:
    """F16 as [1, 3, size, size] in [0, 1]: the centre crop at 512, resized (Lanczos) below that."""
    return centre_square(sample(IMAGE), size)


def flops_per_iteration(size: int) -> int:
    """FLOPs of one forward + backward of the paper's denoising net at size x size (meta device)."""
    cfg = PAPER["denoise"].net
    with torch.device("meta"):
        net = build_net(cfg).train()
        z = torch.empty(1, cfg.in_channels, *grid_size(size, size, cfg.depth))
        y = torch.empty(1, cfg.out_channels, size, size)
    with FlopCounterMode(display=False) as counter:
        loss = F.mse_loss(crop_center(net(z), size, size), y)
        loss.backward()
    return counter.get_total_flops()


def run_engine(name: str, engine: EngineConfig, args, device) -> dict:
    preset = PAPER["denoise"]
    clean = clean_image(args.size)
    noisy = synthesize(clean, "noise:25", seed=args.seed).observed
    config = replace(preset.fit, iterations=args.iterations, check_every=max(1, args.iterations // 10))
    z = make_input("noise", preset.input_channels, *grid_size(args.size, args.size, preset.net.depth),
                   torch.Generator().manual_seed(args.seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        net = build_net(preset.net)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    result = fit(net, z, Denoise(), noisy.pixels, config, reference=clean.pixels, seed=args.seed,
                 device=device, engine=engine)
    first, last = result.history[0], result.history[-1]
    steady = (last["iteration"] - first["iteration"]) / (last["seconds"] - first["seconds"]) \
        if last["iteration"] > first["iteration"] else None
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    row = {
        "engine": name, "config": asdict(engine), "size": args.size, "iterations": result.iterations,
        "seconds": round(result.seconds, 3), "it_per_s_total": round(result.iterations_per_second, 4),
        "it_per_s_steady": None if steady is None else round(steady, 4),
        "psnr": round(psnr(result.image, clean.pixels), 3), "backtracks": result.backtracks,
        "peak_memory_mib": round(peak_mib, 1),
        "estimated_memory_mib": round(estimate_fit_bytes(
            preset.net, args.size, args.size, in_channels=preset.input_channels, out_channels=3,
            bf16=engine.autocast_bf16, backtrack=config.backtrack) / 2**20, 1),
    }
    print(f"{name:>18}: {row['it_per_s_steady']} it/s steady, {row['it_per_s_total']} total, "
          f"PSNR {row['psnr']} dB, peak {row['peak_memory_mib']} MiB (estimate {row['estimated_memory_mib']})",
          flush=True)
    return row


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--size", type=int, default=None, help="image side in px (default 512 on CUDA, 128 on the CPU)")
    parser.add_argument("--iterations", type=int, default=None, help="default 300 on CUDA, 30 on the CPU")
    parser.add_argument("--ablation-iterations", type=int, default=300,
                        help="CUDA: iterations of each ablation run (0 = none)")
    parser.add_argument("--ablations", default="2nd-fit,size+32,size+64,align,no-compile,no-graphs,no-bf16",
                        help="CUDA: comma-separated, in this order (each compiling one costs about a minute)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    args.size = args.size or (512 if on_cuda else 128)
    args.iterations = args.iterations or (300 if on_cuda else 30)
    if args.size < 32 or args.iterations < 10:
        parser.error(f"--size must be >= 32 and --iterations >= 10, got {args.size} and {args.iterations}")

    name = device_name(device)
    flops = flops_per_iteration(args.size)
    print(f"{name.description}, {args.size}x{args.size}, {args.iterations} iterations, "
          f"{flops / 1e12:.3f} TFLOP per iteration (forward + backward)", flush=True)

    fast_engine = EngineConfig.fast(device)
    # Ablations (CUDA): a second fast fit in the same process (a new net: what each image of a
    # batch pays once the first has compiled), the fast engine with one part off, or one more on.
    # A new image size recompiles: the first new size with dynamic shapes (torch's automatic
    # dynamic shapes), later ones should reuse that code and only record their CUDA graphs.
    ablations = {"2nd-fit": ("fast, 2nd fit", fast_engine, 0),  # (label, engine, px added to --size)
                 "size+32": ("fast, new size +32", fast_engine, 32),
                 "size+64": ("fast, new size +64", fast_engine, 64),
                 "align": ("fast + align_channels 8", replace(fast_engine, align_channels=8), 0),
                 "no-compile": ("fast - compile", fast_engine.without("compile"), 0),
                 "no-graphs": ("fast - cuda_graphs", fast_engine.without("cuda_graphs"), 0),
                 "no-bf16": ("fast - bf16", fast_engine.without("autocast_bf16"), 0)}
    chosen = [a for a in args.ablations.split(",") if a]
    if unknown := set(chosen) - set(ablations):
        parser.error(f"unknown ablation(s) {sorted(unknown)}; expected some of {', '.join(ablations)}")
    ablations = [ablations[a] for a in chosen] if on_cuda and args.ablation_iterations else []
    runs = [("plain", EngineConfig.plain(), args.iterations, 0), ("fast", fast_engine, args.iterations, 0)]
    runs += [(label, engine, args.ablation_iterations, grow) for label, engine, grow in ablations]
    peaks = peak_tflops(name.description) if on_cuda else None
    rows = []
    for label, engine, iterations, grow in runs:  # the JSON is rewritten after each run: a killed run keeps its rows
        row = run_engine(label, engine, argparse.Namespace(**{**vars(args), "iterations": iterations,
                                                               "size": args.size + grow}), device)
        tf32 = on_cuda and torch.backends.cudnn.allow_tf32
        precision = "bf16" if engine.autocast_bf16 else "tf32" if tf32 else "fp32"
        peak = None if peaks is None else peaks[precision]
        row["peak_tflops"], row["peak_precision"] = peak, precision if peak else None
        row["mfu"] = None if peak is None or row["it_per_s_steady"] is None or grow else \
            round(flops * row["it_per_s_steady"] / (peak * 1e12), 4)
        rows.append(row)
        ratio = rows[1]["it_per_s_steady"] / rows[0]["it_per_s_steady"] if len(rows) > 1 else None
        record = {
            "size": args.size, "iterations": args.iterations,
            "ablation_iterations": args.ablation_iterations if ablations else None,
            "seed": args.seed, "preset": "denoise", "flops_per_iteration": flops,
            "speedup_steady": None if ratio is None else round(ratio, 3), "engines": rows,
            "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
        }
        path = write_results("fit_speed", name, record, root=args.results_dir)
        if len(rows) == 2:
            print(f"fast / plain: {ratio:.2f}x steady it/s; PSNR plain {rows[0]['psnr']}, fast {rows[1]['psnr']}; "
                  f"MFU plain {rows[0]['mfu']}, fast {rows[1]['mfu']}", flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Packing: images per hour of one-at-a-time fits against packed fits of same-size images.

The paper's denoising preset (skip net, 3000 iterations per image) on noisy 256x256 images
(the colour-denoising suite's ground truths, centre-cropped and resized, sigma 25 noise):

- one at a time: ``fit`` of one image after another in one process (the second image's steady
  rate is used: the first pays compilation);
- packed: ``fit_many`` of N images at once (``pipeline.core.packed.PackedNets``) for each N of
  --packs.

Steady iterations per second come from the fits' history (from 10% of the iterations to the
end); images per hour = N x steady it/s x 3600 / 3000. The PSNR of each image packed and alone
is recorded too (same seeds: they should agree up to rounding). Both use the default engine
(``EngineConfig.fast``). The DIP core only (no Ray, fsspec or Click).

    python -m benchmarks.packing_speed                   # CUDA: 256x256, packs of 4 and 8
    python -m benchmarks.packing_speed --size 32 --iterations 10 --packs 2   # CPU smoke test

Writes ``benchmarks/results/packing_speed/<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import RESULTS, centre_square, denoise_color, device_name, write_results
from pipeline.core.fit import fit, fit_many
from pipeline.core.metrics import psnr
from pipeline.core.nets import build_net, grid_size, make_input
from pipeline.core.operators import Denoise
from pipeline.core.packed import PackedNets
from pipeline.core.presets import PAPER
from pipeline.core.synthetic import synthesize
from pipeline.evaluation.suites import DEFAULT_DATA, DENOISE_COLOR

PAPER_ITERATIONS = 3000


def images(data: Path, size: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n (noisy, clean) pairs [1, 3, size, size], cycling through the suite's ground truths."""
    out = []
    for k in range(n):
        clean = centre_square(denoise_color(DENOISE_COLOR[k % len(DENOISE_COLOR)], "GT", data), size)
        noisy = synthesize(clean, "noise:25", seed=k).observed.pixels
        out.append((noisy, clean.pixels))
    return out


def nets_and_inputs(n: int, size: int, seed0: int = 0):
    preset = PAPER["denoise"]
    nets, zs = [], []
    for k in range(n):
        zs.append(make_input("noise", preset.input_channels, *grid_size(size, size, preset.net.depth),
                             torch.Generator().manual_seed(seed0 + k)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed0 + k)
            nets.append(build_net(preset.net))
    return nets, zs


def steady(history: list[dict]) -> float:
    first, last = history[0], history[-1]
    return (last["iteration"] - first["iteration"]) / (last["seconds"] - first["seconds"])


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--packs", default="4,8", help="comma-separated pack sizes")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    packs = [int(p) for p in args.packs.split(",")]
    config = replace(PAPER["denoise"].fit, iterations=args.iterations, check_every=max(1, args.iterations // 10))
    pairs = images(args.data, args.size, max(packs))
    name = device_name(device)
    record = {"size": args.size, "iterations": args.iterations, "preset": "denoise",
              "paper_iterations": PAPER_ITERATIONS, "python": platform.python_version(), "runs": []}

    def save(row: dict) -> Path:  # rewritten after each run: a killed run keeps what it measured
        record["runs"].append(row)
        print(json.dumps(row), flush=True)
        return write_results("packing_speed", name, record, root=args.results_dir)

    # One at a time: two images in a row; the second's steady rate is the warm process's.
    nets, zs = nets_and_inputs(2, args.size)
    alone = []
    for k in range(2):
        started = time.perf_counter()
        result = fit(nets[k], zs[k], Denoise(), pairs[k][0], config, reference=pairs[k][1], seed=k, device=device)
        alone.append(psnr(result.image, pairs[k][1]))
        rate = steady(result.history)
        path = save({"mode": "one at a time", "image": k, "it_per_s_steady": round(rate, 3),
              "seconds_total": round(time.perf_counter() - started, 2), "psnr": round(alone[-1], 3),
              "images_per_hour": round(rate * 3600 / PAPER_ITERATIONS, 1)})
    single_rate = rate

    for n in packs:
        nets, zs = nets_and_inputs(n, args.size)
        started = time.perf_counter()
        results = fit_many(PackedNets(nets), torch.cat(zs), Denoise(), torch.cat([p[0] for p in pairs[:n]]),
                           config, reference=torch.cat([p[1] for p in pairs[:n]]), seeds=list(range(n)),
                           device=device)
        rate = steady(results[0].history)
        psnrs = [psnr(r.image, pairs[k][1]) for k, r in enumerate(results)]
        path = save({"mode": "packed", "pack": n, "it_per_s_steady": round(rate, 3),
              "seconds_total": round(time.perf_counter() - started, 2), "psnr": [round(p, 3) for p in psnrs],
              "psnr_alone_first_two": [round(p, 3) for p in alone],
              "images_per_hour": round(n * rate * 3600 / PAPER_ITERATIONS, 1),
              "ratio_to_one_at_a_time": round(n * rate / single_rate, 3)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Early stopping on the denoising suite: iterations saved and PSNR, against the fixed budget.

One fit per image of the colour-denoising suite (the authors' sigma-25 noisy inputs, the paper's
``denoise`` preset: 3000 iterations, EMA 0.99) with the moving-variance detector in dry-run mode
(``EarlyStopConfig(dry_run=True)``): the fit runs the whole budget while the detector records
where it would have stopped and keeps its output, so both come from one fit:

- fixed budget: the output after 3000 iterations (the EMA), its PSNR against the ground truth;
- early stopping: the detector's output (at the variance minimum), its PSNR, and the iteration
  at which it would have stopped (the budget if it never fired).

The history (every --check-every iterations: PSNR of the EMA and the window's variance) is
written too: ``early_stop_replay.py`` replays it through the detector with other patience,
start and tolerance values (at that resolution), without fitting again.
Images run in the suite's order until --time-budget would be exceeded; the JSON is rewritten
after each image. The DIP core only (no Ray, fsspec or Click).

    python benchmarks/early_stop_savings.py                        # CUDA
    python benchmarks/early_stop_savings.py --device cpu --preset cpu-small --size 96 --check-every 10

Writes benchmarks/results/early_stop_savings_<device-name-or-cpu>[_<preset>].json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fit_speed import device_name, slug  # noqa: E402  (after the sys.path insert: runs from a checkout)
from pipeline.core.early_stop import EarlyStopConfig  # noqa: E402  (after the sys.path insert: runs from a checkout)
from pipeline.core.fit import fit  # noqa: E402  (after the sys.path insert: runs from a checkout)
from pipeline.core.images import read  # noqa: E402  (after the sys.path insert: runs from a checkout)
from pipeline.core.metrics import psnr  # noqa: E402  (after the sys.path insert: runs from a checkout)
from pipeline.core.nets import build_net, grid_size, make_input  # noqa: E402  (after the sys.path insert: runs from a checkout)
from pipeline.core.operators import Denoise  # noqa: E402  (after the sys.path insert: runs from a checkout)
from pipeline.core.presets import get_preset  # noqa: E402  (after the sys.path insert: runs from a checkout)
from pipeline.evaluation.suites import DEFAULT_DATA, DENOISE_COLOR  # noqa: E402  (after the sys.path insert: runs from a checkout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--preset", default="denoise", help="a denoising preset (denoise, denoise-50, cpu-small)")
    parser.add_argument("--iterations", type=int, default=None, help="default: the preset's")
    parser.add_argument("--window", type=int, default=None, help="default: the preset's detector")
    parser.add_argument("--patience", type=int, default=None, help="default: the preset's detector")
    parser.add_argument("--start", type=int, default=None, help="default: the preset's detector")
    parser.add_argument("--tolerance", type=float, default=None, help="default: the preset's detector")
    parser.add_argument("--check-every", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--images", default=None, help="comma-separated image names (default: the whole suite)")
    parser.add_argument("--size", type=int, default=None, help="centre-crop each image to size x size (smoke tests)")
    parser.add_argument("--time-budget", type=float, default=540.0, help="seconds, all included")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    started = time.perf_counter()
    device = torch.device(args.device)
    preset = get_preset("denoise", args.preset)
    args.iterations = args.iterations or preset.fit.iterations
    args.window = args.window or preset.early_stop.window
    args.patience = args.patience or preset.early_stop.patience
    args.start = preset.early_stop.start if args.start is None else args.start
    args.tolerance = preset.early_stop.tolerance if args.tolerance is None else args.tolerance
    detector = EarlyStopConfig(window=args.window, patience=args.patience, start=args.start,
                               tolerance=args.tolerance, dry_run=True)
    config = replace(preset.fit, iterations=args.iterations, check_every=args.check_every, early_stop=detector)
    name = device_name(device)
    record = {"benchmark": "early_stop_savings", "device": name, "preset": preset.name, "iterations": args.iterations,
              "size": args.size,
              "window": args.window, "patience": args.patience, "start": args.start,
              "tolerance": args.tolerance, "check_every": args.check_every,
              "torch": torch.__version__, "python": platform.python_version(), "images": [], "not_run": []}
    args.output.mkdir(parents=True, exist_ok=True)
    suffix = "" if preset.name == "denoise" else f"_{preset.name}"
    path = args.output / f"early_stop_savings_{slug(name)}{suffix}.json"

    names = (args.images.split(",") if args.images else list(DENOISE_COLOR))[: args.limit]
    for k, image in enumerate(names):
        elapsed = time.perf_counter() - started
        done = record["images"]
        per_image = elapsed / len(done) if done else 0.0
        if done and elapsed + per_image > args.time_budget:
            record["not_run"] = list(names[k:])
            break
        noisy = read(args.data / "denoise_color_sigma25" / f"{image}_noisy.png").pixels
        clean = read(args.data / "denoise_color_sigma25" / f"{image}_GT.png").pixels
        if args.size:
            top, left = (noisy.shape[-2] - args.size) // 2, (noisy.shape[-1] - args.size) // 2
            noisy, clean = (x[..., top:top + args.size, left:left + args.size] for x in (noisy, clean))
        h, w = noisy.shape[-2:]
        z = make_input("noise", preset.input_channels, *grid_size(h, w, preset.net.depth),
                       torch.Generator().manual_seed(0))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = build_net(preset.net)
        result = fit(net, z, Denoise(), noisy, config, reference=clean, seed=0, device=device)
        fired = result.stopped_early
        stop = result.fired_at if fired else args.iterations
        row = {"image": image, "width": w, "height": h, "seconds": round(result.seconds, 2),
               "psnr_fixed": round(result.history[-1]["psnr_reference"], 3),
               "psnr_early_stop": round(psnr(result.image, clean), 3), "detector_fired": fired,
               "best_iteration": result.best_iteration, "stop_iteration": stop,
               "iterations_saved": args.iterations - stop,
               "history": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in e.items()}
                           for e in result.history]}
        done.append(row)
        fixed = [r["psnr_fixed"] for r in done]
        early = [r["psnr_early_stop"] for r in done]
        record["summary"] = {
            "images": len(done), "mean_psnr_fixed": round(statistics.mean(fixed), 3),
            "mean_psnr_early_stop": round(statistics.mean(early), 3),
            "iterations_fixed": args.iterations * len(done),
            "iterations_early_stop": sum(r["stop_iteration"] for r in done),
            "fraction_saved": round(sum(r["iterations_saved"] for r in done) / (args.iterations * len(done)), 3),
        }
        record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{image} {w}x{h}: fixed {row['psnr_fixed']} dB, early stop {row['psnr_early_stop']} dB "
              f"(best {row['best_iteration']}, stop {stop}), {row['seconds']} s", flush=True)
    print(json.dumps(record.get("summary")), flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

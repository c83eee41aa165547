"""Stopping rules without ground truth against the fixed budget and the oracle, on the colour
denoising suite (the authors' sigma-25 noisy inputs, centre crops).

    python -m benchmarks.stop_rules --preset denoise --size 64 --iterations 1000     # the paper's net
    python -m benchmarks.stop_rules --preset cpu-small --size 64 --iterations 3000   # the small net, long
    python -m benchmarks.stop_rules --preset denoise --size 0 --iterations 3000 --device cuda  # full size, GPU
    python -m benchmarks.stop_rules --replay benchmarks/results/stop_rules-denoise-64/cpu.json  # no fitting

One fit per image, run to the whole budget with its history recorded every 10 iterations (the
ES-WMV detector in dry-run mode beside it), then every rule is replayed from that history:

- fixed: the output at the budget;
- oracle: the best PSNR along the trajectory (needs the ground truth: the bound);
- wmv: the moving-variance detector (the preset's window and patience): its output, and where it fired;
- discrepancy@m: the first check where the residual RMS ‖y − x‖/√n of the output falls to m·σ̂,
  σ̂ estimated from the noisy input (``pipeline.core.noise``); the budget's output if it never does.

``--replay FILE`` fits nothing: it takes the histories an earlier run recorded, estimates σ̂ of the
same noisy crops again with the current estimator and replays the discrepancy rule; the fixed budget,
the oracle and ES-WMV are kept from the file (written as benchmark ``<its benchmark>-replayed``, for
the device that ran the fits).

Writes ``benchmarks/results/stop_rules-<preset>-<size or full>/<device>.json``: per image and rule, PSNR (dB) and
the iterations it ran; per rule the mean PSNR, the mean and worst gap to the oracle, and the mean
share of iterations saved against the fixed budget. Core only (no Ray).
"""

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import (
    RESULTS,
    ROOT,
    Device,
    centre_crop,
    denoise_color_file,
    device_name,
    read_results,
    write_results,
)
from pipeline.core.fit import fit
from pipeline.core.images import read
from pipeline.core.metrics import psnr
from pipeline.core.options import Options
from pipeline.core.prepare import prepare
from pipeline.evaluation.suites import DEFAULT_DATA, DENOISE_COLOR

MARGINS = (0.9, 0.95, 1.0, 1.05, 1.1)


def replay(history: list[dict], floor: float, margin: float) -> tuple[float, int]:
    """(PSNR, iteration) of the discrepancy rule at ``margin`` from a recorded history."""
    for entry in history:
        if 10 ** (-entry["psnr_observation"] / 20) <= margin * floor:
            return entry["psnr_reference"], entry["iteration"]
    return history[-1]["psnr_reference"], history[-1]["iteration"]


def one(name: str, args) -> dict:
    noisy = centre_crop(read(denoise_color_file(name, "noisy", args.data)), args.size)
    clean = centre_crop(read(denoise_color_file(name, "GT", args.data)), args.size)
    options = Options(task="denoise", preset=args.preset, iterations=args.iterations, seed=args.seed,
                      device=args.device)
    job = prepare(noisy, options, reference=clean)
    detector = replace(job.preset.early_stop, dry_run=True)
    config = replace(job.preset.fit, check_every=10, early_stop=detector)
    started = time.perf_counter()
    result = fit(job.net, job.z, job.operator, job.y, config, reference=job.reference, seed=options.seed,
                 device=args.device)
    seconds = time.perf_counter() - started
    history = result.history
    best = max(history, key=lambda e: e["psnr_reference"])
    rules = {
        "fixed": (history[-1]["psnr_reference"], args.iterations),
        "oracle": (best["psnr_reference"], best["iteration"]),
        "wmv": (psnr(result.image, clean.pixels), result.fired_at or args.iterations),
    }
    for margin in MARGINS:
        rules[f"discrepancy@{margin:g}"] = replay(history, job.noise_floor, margin)
    row = {"image": name, "noise_sigma": job.noise_sigma, "psnr_input": psnr(noisy.pixels, clean.pixels),
           "seconds": round(seconds, 1),
           "rules": {k: {"psnr": round(p, 3), "iterations": int(i)} for k, (p, i) in rules.items()},
           "history": [{k: e[k] for k in ("iteration", "psnr_observation", "psnr_reference")} for e in history]}
    print(name, {k: v["psnr"] for k, v in row["rules"].items()}, flush=True)
    return row


def replayed(recorded: dict, data: str) -> dict:
    """An earlier run's results with σ̂ estimated again and the discrepancy rule replayed."""
    from pipeline.core.noise import estimate_noise
    from pipeline.core.operators import Denoise

    for row in recorded["rows"]:
        noisy = centre_crop(read(denoise_color_file(row["image"], "noisy", data)), recorded["size"])
        sigma = estimate_noise(noisy.pixels).sigma
        floor = Denoise().noise_floor(sigma / 255)
        row["noise_sigma_recorded"], row["noise_sigma"] = row["noise_sigma"], sigma
        for margin in MARGINS:
            psnr_at, iteration = replay(row["history"], floor, margin)
            row["rules"][f"discrepancy@{margin:g}"] = {"psnr": round(psnr_at, 3), "iterations": int(iteration)}
    recorded["summary"] = summarise(recorded["rows"], recorded["iterations"])
    return recorded


def summarise(rows: list[dict], budget: int) -> dict:
    summary = {}
    for rule in rows[0]["rules"]:
        gaps = [r["rules"][rule]["psnr"] - r["rules"]["oracle"]["psnr"] for r in rows]
        saved = [1 - r["rules"][rule]["iterations"] / budget for r in rows]
        summary[rule] = {"psnr_mean": round(statistics.fmean(r["rules"][rule]["psnr"] for r in rows), 3),
                         "gap_to_oracle_mean": round(statistics.fmean(gaps), 3),
                         "gap_to_oracle_worst": round(min(gaps), 3),
                         "iterations_saved_mean": round(statistics.fmean(saved), 3)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="denoise")
    parser.add_argument("--size", type=int, default=64, help="centre crop side, px (0: the full image)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the fast engine there)")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--images", default=",".join(DENOISE_COLOR))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--replay", type=Path, default=None,
                        help="an earlier results file: replay its histories, fit nothing")
    args = parser.parse_args()
    if args.replay:
        source = read_results(args.replay)
        result = replayed(source["results"], args.data)
        path = args.replay.resolve()
        result["replayed_from"] = {"file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
                                   "commit": source["commit"], "date": source["date"]}
        out = write_results(f"{source['benchmark']}-replayed", Device(source["device"], source["device_description"]),
                            result, root=args.results_dir)
        for rule, figures in result["summary"].items():
            print(f"{rule:>18}: {figures}")
        print(f"wrote {out}")
        return
    torch.set_num_threads(args.threads)
    benchmark = f"stop_rules-{args.preset}-{args.size or 'full'}"
    device = device_name(args.device)
    rows = []
    for name in args.images.split(","):  # rewritten after every image: a run stopped at a time limit keeps its rows
        rows.append(one(name, args))
        result = {"preset": args.preset, "size": args.size, "iterations": args.iterations, "seed": args.seed,
                  "threads": args.threads, "summary": summarise(rows, args.iterations), "rows": rows}
        out = write_results(benchmark, device, result, root=args.results_dir)
    for rule, figures in result["summary"].items():
        print(f"{rule:>18}: {figures}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

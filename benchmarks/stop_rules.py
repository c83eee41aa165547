"""Stopping rules without ground truth against the fixed budget and the oracle, on the colour
denoising suite (the authors' sigma-25 noisy inputs, centre crops).

    python benchmarks/stop_rules.py --preset denoise --size 64 --iterations 1000     # the paper's net
    python benchmarks/stop_rules.py --preset cpu-small --size 64 --iterations 3000   # the small net, long
    python benchmarks/stop_rules.py --preset denoise --size 0 --iterations 3000 --device cuda  # full size, GPU
    python benchmarks/stop_rules.py --replay benchmarks/results/stop_rules_denoise_64.json  # no fitting

One fit per image, run to the whole budget with its history recorded every 10 iterations (the
ES-WMV detector in dry-run mode beside it), then every rule is replayed from that history:

- fixed: the output at the budget;
- oracle: the best PSNR along the trajectory (needs the ground truth: the bound);
- wmv: the moving-variance detector (the preset's window and patience): its output, and where it fired;
- discrepancy@m: the first check where the residual RMS ‖y − x‖/√n of the output falls to m·σ̂,
  σ̂ estimated from the noisy input (``pipeline.core.noise``); the budget's output if it never does.

``--replay FILE`` fits nothing: it takes the histories an earlier run recorded, estimates σ̂ of the
same noisy crops again with the current estimator and replays the discrepancy rule; the fixed budget,
the oracle and ES-WMV are kept from the file (written to ``FILE`` with ``_replayed`` added).

Writes ``benchmarks/results/stop_rules_<preset>_<size>.json``: per image and rule, PSNR (dB) and
the iterations it ran; per rule the mean PSNR, the mean and worst gap to the oracle, and the mean
share of iterations saved against the fixed budget. Core only (no Ray).
"""

import argparse
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

from pipeline.core.fit import fit  # noqa: E402  (after the sys.path insert: runs from a checkout)
from pipeline.core.images import Picture, read  # noqa: E402  (after the sys.path insert: runs from a checkout)
from pipeline.core.metrics import psnr  # noqa: E402  (after the sys.path insert: runs from a checkout)
from pipeline.core.options import Options  # noqa: E402  (after the sys.path insert: runs from a checkout)
from pipeline.core.prepare import prepare  # noqa: E402  (after the sys.path insert: runs from a checkout)
from pipeline.evaluation.suites import DEFAULT_DATA, DENOISE_COLOR  # noqa: E402  (after the sys.path insert: runs from a checkout)

MARGINS = (0.9, 0.95, 1.0, 1.05, 1.1)


def crop(picture: Picture, size: int | None) -> Picture:
    if not size:
        return picture  # full size
    top, left = (picture.height - size) // 2, (picture.width - size) // 2
    return Picture(pixels=picture.pixels[..., top:top + size, left:left + size].contiguous())


def replay(history: list[dict], floor: float, margin: float) -> tuple[float, int]:
    """(PSNR, iteration) of the discrepancy rule at ``margin`` from a recorded history."""
    for entry in history:
        if 10 ** (-entry["psnr_observation"] / 20) <= margin * floor:
            return entry["psnr_reference"], entry["iteration"]
    return history[-1]["psnr_reference"], history[-1]["iteration"]


def one(name: str, args) -> dict:
    folder = Path(args.data) / "denoise_color_sigma25"
    noisy, clean = crop(read(folder / f"{name}_noisy.png"), args.size), crop(read(folder / f"{name}_GT.png"), args.size)
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


def replayed(path: Path, data: str) -> dict:
    """An earlier run's result with σ̂ estimated again and the discrepancy rule replayed."""
    from pipeline.core.noise import estimate_noise
    from pipeline.core.operators import Denoise

    recorded = json.loads(path.read_text())
    folder = Path(data) / "denoise_color_sigma25"
    for row in recorded["rows"]:
        sigma = estimate_noise(crop(read(folder / f"{row['image']}_noisy.png"), recorded["size"]).pixels).sigma
        floor = Denoise().noise_floor(sigma / 255)
        row["noise_sigma_recorded"], row["noise_sigma"] = row["noise_sigma"], sigma
        for margin in MARGINS:
            psnr_at, iteration = replay(row["history"], floor, margin)
            row["rules"][f"discrepancy@{margin:g}"] = {"psnr": round(psnr_at, 3), "iterations": int(iteration)}
    recorded["summary"] = summarise(recorded["rows"], recorded["iterations"])
    recorded["replayed_from"] = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
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
    parser.add_argument("--out", default=None)
    parser.add_argument("--replay", default=None, help="an earlier result: replay its histories, fit nothing")
    args = parser.parse_args()
    if args.replay:
        source = Path(args.replay).resolve()
        result = replayed(source, args.data)
        out = Path(args.out or source.with_name(source.stem + "_replayed.json"))
        out.write_text(json.dumps(result, indent=1) + "\n")
        for rule, figures in result["summary"].items():
            print(f"{rule:>18}: {figures}")
        print(f"wrote {out}")
        return
    torch.set_num_threads(args.threads)
    tag = "" if not args.device.startswith("cuda") else "_" + torch.cuda.get_device_name().lower().replace(" ", "-")
    name = f"stop_rules_{args.preset}_{args.size or 'full'}{tag}.json"
    out = Path(args.out or ROOT / "benchmarks" / "results" / name)
    rows = []
    for name in args.images.split(","):  # rewritten after every image: a run stopped at a time limit keeps its rows
        rows.append(one(name, args))
        result = {"preset": args.preset, "size": args.size, "iterations": args.iterations, "seed": args.seed,
                  "summary": summarise(rows, args.iterations), "rows": rows,
                  "machine": (torch.cuda.get_device_name() if args.device.startswith("cuda") else
                              f"{platform.machine()}, {args.threads} torch thread(s) on the 2-core build machine"),
                  "torch": torch.__version__}
        out.write_text(json.dumps(result, indent=1) + "\n")
    for rule, figures in result["summary"].items():
        print(f"{rule:>18}: {figures}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Replay recorded fits through the early-stopping detector with other settings, without fitting again.

``early_stop_savings.py`` records, every ``check_every`` iterations of each fit, the window's
variance and the PSNR of the output that would be returned then. This script feeds those
curves to the detector itself (``MovingVariance.observe``, the rule the fit loop runs) for every
combination of --patience, --start and --tolerance, and reports per setting: the fraction of
iterations saved against the fixed budget, the mean PSNR change (early stop minus fixed budget)
and the worst image. The window cannot change: it is the recorded one.

The resolution is the recorded one: a minimum between two checks is not seen, so the replayed
detector may stop up to ``check_every`` iterations away from the live one.

    python benchmarks/early_stop_replay.py benchmarks/results/early_stop_savings_nvidia-h200.json
    python benchmarks/early_stop_replay.py RESULTS.json --patience 200,300,500 --tolerance 0,0.01,0.02

Writes <input stem>_replay.json beside the input; prints the settings sorted by iterations saved,
marking those that save at least --target of the iterations at equal or better mean PSNR.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.early_stop import EarlyStopConfig, MovingVariance  # noqa: E402  (after the sys.path insert: runs from a checkout)


def replay(history: list[dict], budget: int, config: EarlyStopConfig) -> tuple[int, float]:
    """(iterations the fit would run, PSNR of the output it would return) for one recorded fit."""
    detector = MovingVariance(config)
    for entry in history:
        if "variance" not in entry:
            continue
        # The "candidate" is the PSNR the output would score: the detector keeps it at its minimum.
        psnr = torch.tensor([[entry["psnr_reference"]]], dtype=torch.float64)
        detector.observe(torch.tensor([entry["variance"]]), psnr, entry["iteration"])
        if detector.should_stop():
            return min(int(detector.fired_at()[0]), budget), float(detector.best_image[0, 0])
    if detector.best_image is None:
        return budget, history[-1]["psnr_reference"]
    return budget, float(detector.best_image[0, 0])


def evaluate(record: dict, config: EarlyStopConfig) -> dict:
    budget = record["iterations"]
    rows = []
    for image in record["images"]:
        stop, psnr_early = replay(image["history"], budget, config)
        rows.append({"image": image["image"], "stop_iteration": stop,
                     "psnr_change": round(psnr_early - image["psnr_fixed"], 3)})
    changes = [r["psnr_change"] for r in rows]
    return {
        "patience": config.patience, "start": config.start, "tolerance": config.tolerance,
        "fraction_saved": round(1 - sum(r["stop_iteration"] for r in rows) / (budget * len(rows)), 3),
        "mean_psnr_change": round(statistics.mean(changes), 3),
        "worst_psnr_change": min(changes),
        "images": rows,
    }


def numbers(text: str, kind=float) -> list:
    return [kind(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="early_stop_savings JSON files")
    parser.add_argument("--patience", default="50,100,200,300,500,1000")
    parser.add_argument("--start", default="0")
    parser.add_argument("--tolerance", default="0,0.005,0.01,0.02,0.05")
    parser.add_argument("--target", type=float, default=0.30, help="fraction of iterations to save")
    args = parser.parse_args()
    for path in args.results:
        record = json.loads(path.read_text())
        grid = itertools.product(numbers(args.patience, int), numbers(args.start, int), numbers(args.tolerance))
        settings = [evaluate(record, EarlyStopConfig(window=record["window"], patience=p, start=s, tolerance=t))
                    for p, s, t in grid]
        settings.sort(key=lambda r: (-r["fraction_saved"], -r["mean_psnr_change"]))
        for r in settings:
            r["meets_target"] = r["fraction_saved"] >= args.target and r["mean_psnr_change"] >= 0
        out = path.with_name(f"{path.stem}_replay.json")
        summary = {"source": path.name, "device": record["device"], "preset": record["preset"],
                   "window": record["window"], "check_every": record["check_every"],
                   "images": [i["image"] for i in record["images"]], "target": args.target, "settings": settings}
        out.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"{path.name}: {len(record['images'])} image(s), window {record['window']}, "
              f"checks every {record['check_every']}")
        print(f"{'patience':>8} {'start':>6} {'tol':>6} {'saved':>6} {'mean dB':>8} {'worst dB':>8}")
        for r in settings:
            mark = "  <- target" if r["meets_target"] else ""
            print(f"{r['patience']:>8} {r['start']:>6} {r['tolerance']:>6} {r['fraction_saved']:>6.1%} "
                  f"{r['mean_psnr_change']:>+8.3f} {r['worst_psnr_change']:>+8.3f}{mark}")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""The paper's tables on one GPU with the DIP core alone: Set5 x4 super-resolution and colour
denoising at sigma 25, with the paper's presets (sr-x4, denoise), against the paper's figures.

No Ray, fsspec or Click: a loop over the images calling ``pipeline.core.restore.restore``, so it runs
on a GPU machine that has only torch (2.11 or later), numpy, Pillow and scikit-image.

1. Set5 x4: the low-res input is made from the ground truth by ``synthesize(clean, "downsample:4")``
   (Pillow LANCZOS, as the authors did); scored by the paper's protocol (``psnr_y``: Y channel,
   4-pixel shave) with bicubic and the TV prior as baselines. Paper: DIP 29.90, bicubic 28.43, TV 28.86.
2. denoise-color-25: the authors' nine noisy inputs against their ground truths (RGB PSNR).
   Paper: DIP 30.43 (with the output moving average), CBM3D 31.42. Beside ours, the authors'
   published outputs (``<name>_deep_prior.png``) scored the same way (``psnr_authors``).
3. barbara-50: ``samples/restoration/barbara.png`` (512x512 grey) with 50% of its pixels dropped
   (``mask:bernoulli:0.5``, seed ``--seed``), the ``missing-pixels`` preset (11000 iterations).

Images run in that order until ``--time-budget`` (default 9 minutes, all included) would be
exceeded: an image whose estimated time (from the images done so far) does not fit is not
started, and the JSON records what finished and what did not. The JSON is rewritten after each
image, so a killed run leaves its results too.

    python -m benchmarks.paper_tables                                   # on a CUDA machine
    python -m benchmarks.paper_tables --device cpu --limit 1 --iterations 5   # CPU smoke test

Writes ``benchmarks/results/paper_tables/<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, denoise_color_file, device_name, set5_file, write_results
from pipeline.core.images import read
from pipeline.core.metrics import psnr
from pipeline.core.options import Options
from pipeline.core.restore import restore
from pipeline.core.synthetic import synthesize
from pipeline.evaluation.suites import DEFAULT_DATA, DENOISE_COLOR, PAPER, SET5

SUITES = ("set5-x4", "denoise-color-25", "barbara-50")
# Which of our figures each paper figure is compared with (None: not something we compute).
COMPARED = {
    "set5-x4": {"dip": "psnr_y", "bicubic": "psnr_y_baseline", "tv": "psnr_y_tv"},
    "denoise-color-25": {"dip": "psnr", "cbm3d": None},
    "barbara-50": {},
}
PRESETS = {
    "set5-x4": dict(task="sr", scale=4, preset="sr-x4"),
    "denoise-color-25": dict(task="denoise", preset="denoise"),
    "barbara-50": dict(task="inpaint", preset="missing-pixels"),
}
FIGURES = ("psnr", "psnr_y", "ssim", "psnr_authors", "psnr_input", "psnr_baseline", "psnr_y_baseline", "psnr_tv",
           "psnr_y_tv")


def jobs(data: Path, suites: list[str], limit: int | None) -> list[tuple[str, str, Path, Path | None]]:
    """(suite, image name, input file, reference file or None) in the order they run."""
    found = []
    if "set5-x4" in suites:
        found += [("set5-x4", n, set5_file(n, "GT", data), None) for n in SET5[:limit]]
    if "denoise-color-25" in suites:
        found += [("denoise-color-25", n, denoise_color_file(n, "noisy", data), denoise_color_file(n, "GT", data))
                  for n in DENOISE_COLOR[:limit]]
    if "barbara-50" in suites:
        found.append(("barbara-50", "barbara", data / "samples" / "restoration" / "barbara.png", None))
    missing = [str(p) for _, _, *paths in found for p in paths if p is not None and not p.exists()]
    if missing:
        raise SystemExit(f"missing input files (is --data {data} laid out like ../shared/data?): {', '.join(missing)}")
    return found


def run_one(suite: str, source: Path, reference: Path | None, args) -> dict:
    """Restore one image with the suite's paper preset; its figures (dB), sizes and timings."""
    clock = time.perf_counter()
    mask, authors = None, None
    if suite == "set5-x4":
        synthetic = synthesize(read(source), "downsample:4", args.seed)  # LANCZOS; no randomness
        observed, clean = synthetic.observed, synthetic.reference
    elif suite == "barbara-50":
        synthetic = synthesize(read(source), "mask:bernoulli:0.5", args.seed)
        observed, clean, mask = synthetic.observed, synthetic.reference, synthetic.mask
    else:
        observed, clean = read(source), read(reference)
        published = source.with_name(source.name.replace("_noisy", "_deep_prior"))
        if published.exists():
            authors = round(psnr(read(published).pixels, clean.pixels), 3)
    options = Options(**PRESETS[suite], iterations=args.iterations, seed=args.seed, device=args.device,
                      tv_baseline=args.tv and "tv" in PAPER.get(suite, {}))  # where the paper has a TV figure
    result = restore(observed, options, mask=mask, reference=clean)
    return {
        **{k: result.metrics.get(k) for k in FIGURES}, "psnr_authors": authors, "preset": result.preset.name,
        "width": clean.width, "height": clean.height, "iterations": result.fit.iterations,
        "best_iteration": result.fit.best_iteration, "backtracks": result.fit.backtracks,
        "fit_seconds": round(result.fit.seconds, 2), "seconds": round(time.perf_counter() - clock, 2),
        "iterations_per_second": round(result.fit.iterations_per_second, 2),
    }


def summarize(suite: str, images: list[dict], total: int) -> dict:
    """Means over the images done, and the paper's figures beside ours."""
    means = {}
    for key in FIGURES:
        values = [image[key] for image in images if image.get(key) is not None]
        if values and len(values) == len(images):
            means[key] = round(statistics.fmean(values), 3)
    versus = {}
    for name, paper in PAPER.get(suite, {}).items():
        ours = means.get(COMPARED[suite].get(name) or "")
        versus[name] = {"paper": paper, "ours": ours, "metric": COMPARED[suite].get(name),
                        "difference": None if ours is None else round(ours - paper, 3)}
    return {"done": len(images), "total": total, "complete": len(images) == total, "means": means,
            "vs_paper": versus, "seconds": round(sum(image["seconds"] for image in images), 1)}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Laid out like ../shared/data.")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu (default: cuda)")
    parser.add_argument("--limit", type=int, help="The first N images of each suite.")
    parser.add_argument("--iterations", type=int, help="Override the presets' iterations (smoke tests).")
    parser.add_argument("--time-budget", type=float, default=540.0, help="Seconds in all (default: 9 minutes).")
    parser.add_argument("--suite", action="append", choices=SUITES, help="Repeatable; default: both.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tv", action=argparse.BooleanOptionalAction, default=True,
                        help="Set5: also score the TV prior (on the CPU, 500 Adam steps per image).")
    parser.add_argument("--results-dir", type=Path, default=RESULTS,
                        help="Writes <results-dir>/paper_tables/<device>.json (default: benchmarks/results).")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here (use --device cpu for a smoke test)")
    start = time.perf_counter()
    name = device_name(args.device)
    suites = args.suite or list(SUITES[:2])  # barbara-50 only when asked (--suite barbara-50)
    todo = jobs(args.data, suites, args.limit)
    report = {
        "cuda": torch.version.cuda, "python": platform.python_version(), "platform": platform.platform(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "time_budget_s": args.time_budget, "stopped": None, "not_run": [], "images": [], "suites": {},
    }
    rate = None  # seconds per (pixel x iteration) of the images done so far
    for index, (suite, image, source, reference) in enumerate(todo):
        left = args.time_budget - (time.perf_counter() - start)
        iterations = args.iterations or Options(**PRESETS[suite]).resolve().fit.iterations
        estimate = rate * read(source).pixels.shape[-2:].numel() * iterations if rate else 0.0  # the output's pixels
        if left <= 0 or estimate > left:
            report["stopped"] = f"time budget: {left:.0f} s left, the next image needs about {estimate:.0f} s"
            report["not_run"] = [f"{s}/{n}" for s, n, *_ in todo[index:]]
            break
        row = {"suite": suite, "image": image, **run_one(suite, source, reference, args)}
        rate = sum(r["seconds"] for r in [*report["images"], row]) / sum(
            r["width"] * r["height"] * r["iterations"] for r in [*report["images"], row])
        report["images"].append(row)
        print(f"{suite} {image}: " + ", ".join(f"{k} {row[k]:.2f}" for k in FIGURES if row.get(k) is not None)
              + f"; {row['iterations']} iterations in {row['seconds']:.1f} s", flush=True)
        out = write(args.results_dir, name, report, suites, todo, start)
    out = write(args.results_dir, name, report, suites, todo, start)
    for suite, summary in report["suites"].items():
        print(suite, json.dumps(summary["vs_paper"]), f"({summary['done']}/{summary['total']} images)")
    print(f"wrote {out}")
    return out


def write(root: Path, device, report: dict, suites: list[str], todo: list, start: float) -> Path:
    for suite in suites:
        images = [r for r in report["images"] if r["suite"] == suite]
        report["suites"][suite] = summarize(suite, images, sum(1 for s, *_ in todo if s == suite))
    report["elapsed_s"] = round(time.perf_counter() - start, 1)
    return write_results("paper_tables", device, report, root=root)


if __name__ == "__main__":
    main()

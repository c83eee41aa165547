"""Warm starts against cold ones, measured as iterations to quality (``pipeline.core.warm``).

    python benchmarks/iterations_to_quality.py                          # CPU: tiles and collection, ~1 h
    python benchmarks/iterations_to_quality.py --settings tiles --images F16 --budget 400   # a quick look
    python benchmarks/iterations_to_quality.py --settings tiles --tile-start shrink          # ~25 min

The images are the colour denoising suite's (the authors' sigma-25 noisy inputs and ground truths,
../shared/data), restored with the paper's `denoise` network. Every fit runs its whole budget with
its history every 10 iterations and the discrepancy rule in dry-run (its output, and the weights a
chained fit goes on from, are those at the rule's stop, as in a real run; the history goes on past
it). Per fit:

- quality: the cold fit's best PSNR along its trajectory (the oracle) less ``TOLERANCE`` dB;
- iterations to quality: the first iteration whose PSNR reaches that (a warm fit that never does
  counts the whole budget and is flagged);
- the PSNR of the rule's output (blind stop) and where it stopped.

Settings:

- ``tiles``: ``--crop`` centre crops cut into ``--tile`` px tiles (overlap 1/8, as ``restore_tiled``
  does), each fitted cold (its own seed) and warm in serpentine order from the weights the tile
  before it had at its stop (``--tile-start``: ``neighbour``, with the first tile's input, or
  ``shrink``, half those weights and half its own random network, with its own input;
  ``pipeline.core.warm.chained_start``). The blended images of
  both are scored whole and in the blend bands (pixels two tiles cover) against elsewhere: a seam
  shows as a lower PSNR in the bands.
- ``collection``: ``--size`` px centre crops of the images not in ``--train``; the initial weights
  are learned (``pipeline.core.collection.learn_initial``) on crops of the ``--train`` images at the
  four corners (all fits from them use the learning's input z); each test crop is fitted cold and
  from those weights (``collection``).

Writes ``benchmarks/results/iterations_to_quality_<device>[_<tile start>].json`` (the tile start
named when it is not ``neighbour``): per setting ``cold_iterations``,
``warm_iterations`` (means of iterations to quality), ``psnr_cold``, ``psnr_warm`` (means of the
blind-stop PSNR, dB), ``images`` and the per-fit rows. Core only (no Ray).
"""

import argparse
import json
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.collection import learn_initial  # noqa: E402  (after the sys.path insert)
from pipeline.core.fit import fit  # noqa: E402
from pipeline.core.images import Picture, read  # noqa: E402
from pipeline.core.metrics import psnr  # noqa: E402
from pipeline.core.options import Options  # noqa: E402
from pipeline.core.prepare import prepare  # noqa: E402
from pipeline.core.presets import DISCREPANCY_MARGIN  # noqa: E402
from pipeline.core.tiles import TILE_OVERLAP_DIVISOR, blend_weights, tile_boxes  # noqa: E402
from pipeline.core.warm import Start, chained_start, serpentine, weights_of  # noqa: E402
from pipeline.evaluation.suites import DEFAULT_DATA, DENOISE_COLOR  # noqa: E402

TOLERANCE = 0.2  # dB below the cold fit's best that counts as its quality


def pictures(data: str, name: str) -> tuple[Picture, Picture]:
    folder = Path(data) / "denoise_color_sigma25"
    return read(folder / f"{name}_noisy.png"), read(folder / f"{name}_GT.png")


def cut(picture: Picture, top: int, left: int, h: int, w: int) -> Picture:
    return Picture(pixels=picture.pixels[..., top:top + h, left:left + w].contiguous())


def centre(picture: Picture, size: int) -> Picture:
    return cut(picture, (picture.height - size) // 2, (picture.width - size) // 2, size, size)


def run_fit(noisy: Picture, clean: Picture, options: Options, start: Start | None) -> dict:
    """One fit to the whole budget, the discrepancy rule in dry-run: its history, the rule's output
    and stop, and the weights it had there."""
    job = prepare(noisy, options, reference=clean, start=start)
    detector = replace(job.preset.early_stop, rule="discrepancy", margin=DISCREPANCY_MARGIN, dry_run=True)
    config = replace(job.preset.fit, check_every=10, early_stop=detector)
    target = (DISCREPANCY_MARGIN * job.noise_floor) ** 2
    kept: dict = {}

    def at_stop(i, total, entry):  # the weights where the rule stops (what a real run goes on from)
        if entry is not None and "weights" not in kept and 10 ** (-entry["psnr_observation"] / 10) <= target:
            kept["weights"] = weights_of(job.net)

    started = time.perf_counter()
    result = fit(job.net, job.z, job.operator, job.y, config, reference=job.reference, seed=options.seed,
                 device=options.device, noise_sigma=job.noise_floor, progress=at_stop)
    return {"history": [(e["iteration"], e["psnr_reference"]) for e in result.history],
            "image": result.image, "stop": result.fired_at or options.iterations or 0,
            "psnr_stop": psnr(result.image, clean.pixels), "weights": kept.get("weights", weights_of(job.net)),
            "seconds": time.perf_counter() - started}


def to_quality(history: list[tuple[int, float]], quality: float, budget: int) -> tuple[int, bool]:
    """(the first iteration whose PSNR reaches ``quality``, whether it did; else the budget)."""
    for iteration, value in history:
        if value >= quality:
            return iteration, True
    return budget, False


def row_of(name: str, part: str, cold: dict, warm: dict, budget: int) -> dict:
    best = max(p for _, p in cold["history"])
    cold_at, _ = to_quality(cold["history"], best - TOLERANCE, budget)
    warm_at, reached = to_quality(warm["history"], best - TOLERANCE, budget)
    return {"image": name, "part": part, "cold_best": round(best, 3), "cold_iterations": cold_at,
            "warm_iterations": warm_at, "warm_reached": reached,
            "warm_best": round(max(p for _, p in warm["history"]), 3),
            "psnr_cold": round(cold["psnr_stop"], 3), "psnr_warm": round(warm["psnr_stop"], 3),
            "cold_stop": cold["stop"], "warm_stop": warm["stop"]}


def tiles_one(spec: tuple) -> dict:
    """One image of the tiles setting: every tile cold, then the chain of ``--tile-start``; both blended."""
    name, args = spec
    torch.set_num_threads(args.threads)
    noisy, clean = (centre(p, args.crop) for p in pictures(args.data, name))
    overlap = max(1, args.tile // TILE_OVERLAP_DIVISOR)
    boxes = tile_boxes(args.crop, args.crop, args.tile, overlap)
    options = Options(task="denoise", preset="denoise", iterations=args.budget, seed=args.seed, device=args.device)
    cold = [run_fit(cut(noisy, *box), cut(clean, *box), replace(options, seed=args.seed + k), None)
            for k, box in enumerate(boxes)]
    order, warm, start = serpentine(boxes), [None] * len(boxes), None
    for k in order:
        tile_options = replace(options, seed=args.seed + k, warm_start=args.tile_start)
        warm[k] = run_fit(cut(noisy, *boxes[k]), cut(clean, *boxes[k]), tile_options, start)
        start = chained_start(warm[k]["weights"], args.tile_start, args.seed + order[0])
    rows = [{**row_of(name, f"tile {k}", cold[k], warm[k], args.budget), "box": list(boxes[k]),
             "chain_position": order.index(k)} for k in range(len(boxes))]
    whole = {}
    for label, fits in (("cold", cold), ("warm", warm)):
        image, bands = blend([f["image"] for f in fits], boxes, args.crop, overlap)
        error = (image - clean.pixels).square().mean(dim=1)[0]  # (H, W)
        whole[label] = {"psnr": round(psnr(image, clean.pixels), 3),
                        "psnr_bands": round(float(-10 * torch.log10(error[bands].mean())), 3),
                        "psnr_elsewhere": round(float(-10 * torch.log10(error[~bands].mean())), 3)}
    print(name, {k: (v["psnr"], v["psnr_bands"], v["psnr_elsewhere"]) for k, v in whole.items()}, flush=True)
    return {"image": name, "rows": rows, "whole": whole, "tiles": len(boxes)}


def blend(images: list, boxes: list, size: int, overlap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiles blended as ``restore_tiled`` does, and the mask (H, W) of pixels two tiles cover."""
    total, weights, cover = torch.zeros(1, 3, size, size), torch.zeros(1, 1, size, size), torch.zeros(size, size)
    for image, (top, left, h, w) in zip(images, boxes, strict=True):
        weight = blend_weights((top, left, h, w), size, size, overlap)
        total[..., top:top + h, left:left + w] += image * weight
        weights[..., top:top + h, left:left + w] += weight
        cover[top:top + h, left:left + w] += 1
    return total / weights, cover >= 2


def collection_one(spec: tuple) -> list[dict]:
    """One test crop of the collection setting: cold, and from the learned weights."""
    name, weights, args = spec
    torch.set_num_threads(args.threads)
    noisy, clean = (centre(p, args.size) for p in pictures(args.data, name))
    options = Options(task="denoise", preset="denoise", iterations=args.budget, seed=args.seed, device=args.device)
    cold = run_fit(noisy, clean, options, None)
    learned = run_fit(noisy, clean, replace(options, warm_start="collection"), Start(weights, input_seed=args.seed))
    rows = [row_of(name, "collection", cold, learned, args.budget)]
    print(name, [(r["part"], r["cold_iterations"], r["warm_iterations"], r["psnr_cold"], r["psnr_warm"])
                 for r in rows], flush=True)
    return rows


def summary(rows: list[dict]) -> dict:
    return {"cold_iterations": round(statistics.fmean(r["cold_iterations"] for r in rows), 1),
            "warm_iterations": round(statistics.fmean(r["warm_iterations"] for r in rows), 1),
            "iterations_ratio": round(statistics.fmean(r["cold_iterations"] for r in rows)
                                      / statistics.fmean(r["warm_iterations"] for r in rows), 2),
            "psnr_cold": round(statistics.fmean(r["psnr_cold"] for r in rows), 3),
            "psnr_warm": round(statistics.fmean(r["psnr_warm"] for r in rows), 3),
            "warm_not_reached": sum(not r["warm_reached"] for r in rows), "images": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="tiles,collection")
    parser.add_argument("--images", default="F16,kodim03", help="tiles: the images")
    parser.add_argument("--crop", type=int, default=192, help="tiles: centre crop side, px")
    parser.add_argument("--tile", type=int, default=64, help="tiles: tile side, px")
    parser.add_argument("--tile-start", default="neighbour", choices=("neighbour", "shrink"),
                        help="tiles: the warm start that chains them")
    parser.add_argument("--train", default="baboon,hill,lena", help="collection: the images it is learned on")
    parser.add_argument("--size", type=int, default=64, help="collection: crop side, px")
    parser.add_argument("--budget", type=int, default=800, help="iterations of every fit")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per fit")
    parser.add_argument("--workers", type=int, default=2, help="processes (CUDA: 1)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    settings = args.settings.split(",")
    result = {"machine": (torch.cuda.get_device_name() if args.device.startswith("cuda") else
                          f"{platform.machine()}, {args.workers} x {args.threads} torch thread(s), 2-core machine"),
              "torch": torch.__version__, "preset": "denoise", "budget": args.budget, "tolerance_db": TOLERANCE,
              "seed": args.seed}
    map_ = (lambda f, xs: list(map(f, xs))) if args.workers == 1 else ProcessPoolExecutor(args.workers).map
    if "tiles" in settings:
        images = list(map_(tiles_one, [(n, args) for n in args.images.split(",")]))
        rows = [row for image in images for row in image["rows"]]
        result["tiles"] = {**summary(rows), "start": args.tile_start, "crop": args.crop, "tile": args.tile,
                           "whole": {i["image"]: i["whole"] for i in images}, "rows": rows}
        print("tiles", {k: v for k, v in result["tiles"].items() if k != "rows"}, flush=True)
    if "collection" in settings:
        train = args.train.split(",")
        options = Options(task="denoise", preset="denoise", seed=args.seed, device=args.device)
        crops = [cut(pictures(args.data, name)[0], *corner(pictures(args.data, name)[0], args.size, c), args.size,
                     args.size) for name in train for c in range(4)]
        torch.set_num_threads(args.threads)
        started = time.perf_counter()
        weights = learn_initial(crops, options)
        learned_s = time.perf_counter() - started
        test = [n for n in DENOISE_COLOR if n not in train]
        rows = [row for part in map_(collection_one, [(n, weights, args) for n in test]) for row in part]
        result["collection"] = {**summary(rows), "size": args.size, "train": train, "rows": rows}
        print("collection", {k: v for k, v in result["collection"].items() if k != "rows"}, flush=True)
        result["collection"]["learning"] = {"crops": len(crops), "seconds": round(learned_s, 1)}
    tag = "cpu" if not args.device.startswith("cuda") else torch.cuda.get_device_name().lower().replace(" ", "-")
    suffix = "" if args.tile_start == "neighbour" or "tiles" not in settings else f"_{args.tile_start}"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"iterations_to_quality_{tag}{suffix}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


def corner(picture: Picture, size: int, k: int) -> tuple[int, int]:
    """(top, left) of corner k (0-3) of ``picture`` for a ``size`` crop."""
    return ((picture.height - size) * (k // 2), (picture.width - size) * (k % 2))


if __name__ == "__main__":
    main()

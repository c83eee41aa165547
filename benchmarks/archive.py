"""Blind archive restoration on the archive-synthetic model: the noise level, the defect masks,
and archive against denoise.

    python -m benchmarks.archive                                  # noise, masks and fits, CPU, about 15 min
    python -m benchmarks.archive --parts noise,masks              # no fits: a minute
    python -m benchmarks.archive --parts fits --size 96 --iterations 2000   # the CPU figures
    python -m benchmarks.archive --parts fits --size 0 --iterations 3000 --preset archive --device cuda
    python -m benchmarks.archive --parts scale                    # a minute

The clean images are the nine ground truths of the colour denoising suite (../shared/data).

1. noise: σ̂ (``pipeline.core.noise``) of each image with Gaussian noise of σ 5, 10, 15, 25, 50
   (clipped to [0, 1], as a file would be), against σ and against the std of the noise that
   remained after clipping; and of each archive scan (``archive:S``) against its grain's RMS. Beside
   it, against the noise present: the noise added and σ̂ of the ground truth alone (its own grain
   and texture, an upper bound of its noise) in quadrature. Then, held out from the estimator's
   tuning, the colour ground truths of Set5 and the paper's samples with Gaussian noise of σ 5,
   10, 25, 50 (``held_out``).
2. masks: ``detect_defects`` on each image at full size as an archive scan of grain 5, 12 and 20
   with the planted dust and scratches (``archive:S``) and without them (``grain:S``): precision,
   recall and IoU of the defect pixels (pooled over the scans, and per grain), and the share of a
   defect-free scan masked.
3. fits: the archive-synthetic suite's scans (image i: grain 5, 12 or 20, with and without
   defects), restored from one observation by ``archive`` and by ``denoise`` with the same
   network, seed and budget. The mask is found on the whole scan, as ``restore`` does; on the
   CPU the fit then runs on a ``--size`` centre crop of scan, mask and ground truth
   (``mask_mode`` "replace"). One fit per scan and task, the whole budget, its history every 10
   iterations; the fixed budget (its last output), the oracle (the best PSNR along the history)
   and the discrepancy rule (the first check where the residual RMS on the kept pixels reaches
   ``DISCREPANCY_MARGIN`` σ̂, replayed from the history as ``benchmarks.stop_rules`` does) are
   read from it.
4. scale: the blind analysis of a 12-megapixel scan (4000x3000, RGB), before any fit: seconds and
   peak memory of ``estimate_noise`` and of ``detect_defects``, each on its own (the time without
   tracing, the memory from ``tracemalloc``, which sees numpy's arrays). The scan is kodim03 as an
   archive scan of grain 12, tiled: the density of grain, dust and texture of a real image, not
   its scratches (a tiled scratch is a row of short segments, shorter than a scratch must be).

Each part writes its own results (and prints its table): ``benchmarks/results/archive-noise/cpu.json``,
``archive-masks/cpu.json``, ``archive-fits-<preset>-<size or full>/<device>.json`` and
``archive-scale/cpu.json`` (noise, masks and scale run on the CPU, whatever --device says). Core only
(no Ray).
"""

import argparse
import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, centre_crop, denoise_color, device_name, sample, write_results
from benchmarks.stop_rules import replay
from pipeline.core.defects import detect_defects
from pipeline.core.fit import fit
from pipeline.core.images import Picture
from pipeline.core.metrics import mask_scores, psnr, ssim
from pipeline.core.noise import estimate_noise
from pipeline.core.options import Options
from pipeline.core.prepare import prepare
from pipeline.core.presets import DISCREPANCY_MARGIN
from pipeline.core.synthetic import synthesize
from pipeline.evaluation.suites import ARCHIVE_SIGMAS, DEFAULT_DATA, DENOISE_COLOR

NOISE_SIGMAS = (5, 10, 15, 25, 50)
HELD_OUT = ("set5_x4/baby_GT.png", "set5_x4/bird_GT.png", "set5_x4/butterfly_GT.png", "set5_x4/head_GT.png",
            "set5_x4/woman_GT.png", "samples/denoising/snail.jpg", "samples/feature_inversion/building.jpg",
            "samples/feature_inversion/monkey.jpg", "samples/inpainting/library.png",
            "samples/restoration/barbara.png", "samples/sr/zebra_GT.png", "samples/inpainting/kate.png")


def error_stats(errors: list[float]) -> dict:
    """Relative errors of σ̂: their mean, the largest in size, and how many are within 10%."""
    return {"error_mean": round(statistics.fmean(errors), 4), "error_worst": round(max(errors, key=abs), 4),
            "within_10pct": sum(abs(e) <= 0.1 for e in errors)}


def noise_part(args) -> dict:
    rows = []
    for i, name in enumerate(DENOISE_COLOR):
        clean = denoise_color(name, "GT", args.data)
        own = estimate_noise(clean.pixels).sigma  # the ground truth's own noise and texture, read as noise
        for sigma in NOISE_SIGMAS:
            noisy = synthesize(clean, f"noise:{sigma}", seed=1000 + 10 * i + sigma).observed
            remained = float((noisy.pixels - clean.pixels).std()) * 255
            estimate = estimate_noise(noisy.pixels).sigma
            rows.append({"image": name, "kind": "gaussian", "sigma": sigma, "remained": round(remained, 3),
                         "estimate": round(estimate, 3), "clean_estimate": round(own, 3)})
        for sigma in ARCHIVE_SIGMAS:
            scan = synthesize(clean, f"archive:{sigma}", seed=2000 + 10 * i + sigma)
            rows.append({"image": name, "kind": "archive", "sigma": sigma, "remained": round(scan.sigma, 3),
                         "estimate": round(estimate_noise(scan.observed.pixels).sigma, 3),
                         "clean_estimate": round(own, 3)})
    held_out = []
    for i, name in enumerate(HELD_OUT):
        clean = sample(name, args.data)
        if clean.channels != 3:
            continue
        for sigma in (5, 10, 25, 50):
            noisy = synthesize(clean, f"noise:{sigma}", seed=3000 + 10 * i + sigma).observed
            remained = float((noisy.pixels - clean.pixels).std()) * 255
            held_out.append({"image": name, "sigma": sigma, "remained": round(remained, 3),
                             "estimate": round(estimate_noise(noisy.pixels).sigma, 3)})
    summary = {}
    for sigma in sorted({r["sigma"] for r in held_out}):
        errors = [r["estimate"] / r["remained"] - 1 for r in held_out if r["sigma"] == sigma]
        summary[f"held-out:{sigma}"] = {**error_stats(errors), "images": len(errors)}
    for kind, sigma in sorted({(r["kind"], r["sigma"]) for r in rows}):
        group = [r for r in rows if r["kind"] == kind and r["sigma"] == sigma]
        errors = [r["estimate"] / r["remained"] - 1 for r in group]
        nominal = [r["estimate"] / sigma - 1 for r in group]
        # against the noise added and the ground truth's own σ̂ together (an upper bound of what it carries)
        present = [r["estimate"] / math.hypot(r["remained"], r["clean_estimate"]) - 1 for r in group]
        summary[f"{kind}:{sigma}"] = {
            **error_stats(errors), "images": len(group),
            "error_vs_nominal_mean": round(statistics.fmean(nominal), 4),
            "error_vs_present_mean": round(statistics.fmean(present), 4),
            "within_10pct_of_present": sum(abs(e) <= 0.1 for e in present)}
    return {"rows": rows, "held_out": held_out, "summary": summary}


def masks_part(args) -> dict:
    rows, pooled = [], {}
    for i, name in enumerate(DENOISE_COLOR):
        clean = denoise_color(name, "GT", args.data)
        for sigma in ARCHIVE_SIGMAS:
            seed = 3000 + 10 * i + sigma
            scan = synthesize(clean, f"archive:{sigma}", seed=seed)
            started = time.perf_counter()
            found = detect_defects(scan.observed.pixels)
            seconds = time.perf_counter() - started
            keep, truth = found.keep, scan.defects.pixels[0, 0].numpy() > 0.5
            hits = int((~keep & ~truth).sum())
            counts = pooled.setdefault(sigma, [0, 0, 0])
            counts[0] += hits
            counts[1] += int((~keep).sum())
            counts[2] += int((~truth).sum())
            grain_only = synthesize(clean, f"grain:{sigma}", seed=seed)
            rows.append({"image": name, "sigma": sigma, "defect_share": round(float((~truth).mean()), 5),
                         **{k: None if v is None else round(v, 4)
                            for k, v in mask_scores(keep, truth).items()},
                         "masked_clean_share": round(detect_defects(grain_only.observed.pixels).fraction, 5),
                         "seconds": round(seconds, 2), "size": f"{scan.observed.width}x{scan.observed.height}"})
            print(name, sigma, {k: rows[-1][k] for k in ("mask_precision", "mask_recall", "masked_clean_share")},
                  flush=True)

    def scores(hits, masked, defects):
        return {"precision": round(hits / masked, 4) if masked else None, "recall": round(hits / defects, 4),
                "iou": round(hits / (masked + defects - hits), 4)}

    total = [sum(c[k] for c in pooled.values()) for k in range(3)]
    summary = {"all": scores(*total), **{f"grain:{s}": scores(*c) for s, c in sorted(pooled.items())},
               "masked_clean_share_mean": round(statistics.fmean(r["masked_clean_share"] for r in rows), 5),
               "masked_clean_share_worst": max(r["masked_clean_share"] for r in rows)}
    return {"rows": rows, "summary": summary}


def fit_one(spec: tuple) -> dict:
    """One scan of the archive-synthetic suite, restored by one task: fixed, oracle and rule."""
    name, sigma, kind, task, args = spec
    torch.set_num_threads(args.threads)
    clean = denoise_color(name, "GT", args.data)
    scan = synthesize(clean, f"{kind}:{sigma}", seed=4000 + 10 * DENOISE_COLOR.index(name) + sigma)
    mask = detect_defects(scan.observed.pixels).keep  # on the whole scan, as restore() does
    mask_picture = Picture(pixels=torch.from_numpy(mask).float()[None, None])
    observed, reference = centre_crop(scan.observed, args.size), centre_crop(clean, args.size)
    truth = centre_crop(scan.defects, args.size)
    options = Options(task=task, preset=args.preset if args.preset != "archive" or task == "archive" else "denoise",
                      iterations=args.iterations, seed=args.seed, device=args.device, early_stop=False,
                      mask_mode="replace")
    job = prepare(observed, options, reference=reference,
                  mask=centre_crop(mask_picture, args.size) if task == "archive" else None)
    config = replace(job.preset.fit, check_every=10, early_stop=None)
    started = time.perf_counter()
    result = fit(job.net, job.z, job.operator, job.y, config, reference=job.reference, seed=options.seed,
                 device=args.device)
    history = result.history
    best = max(history, key=lambda e: e["psnr_reference"])
    rule_psnr, rule_at = replay(history, job.noise_floor, DISCREPANCY_MARGIN)
    defects = truth.pixels[0, 0] < 0.5
    error = (result.image.cpu() - reference.pixels).abs().mean(dim=1)[0]
    row = {"image": name, "sigma": sigma, "kind": kind, "task": task,
           "crop_defect_share": round(float(defects.float().mean()), 5),
           "masked_share": round(float((job.operator.mask < 0.5).float().mean()) if task == "archive" else 0.0, 5),
           "noise_sigma": round(job.noise_sigma, 3), "psnr_input": round(psnr(observed.pixels, reference.pixels), 3),
           "fixed": round(history[-1]["psnr_reference"], 3), "ssim_fixed": round(ssim(result.image.cpu(),
                                                                                        reference.pixels), 4),
           "oracle": round(best["psnr_reference"], 3), "oracle_at": best["iteration"],
           "discrepancy": round(rule_psnr, 3), "discrepancy_at": int(rule_at),
           "defect_error": round(float(error[defects].mean()), 4) if defects.any() else None,
           "seconds": round(time.perf_counter() - started, 1)}
    print({k: row[k] for k in ("image", "kind", "task", "fixed", "oracle", "discrepancy", "discrepancy_at")},
          flush=True)
    return row


def fits_part(args) -> dict:
    specs = [(name, ARCHIVE_SIGMAS[i % len(ARCHIVE_SIGMAS)], kind, task, args)
             for i, name in enumerate(DENOISE_COLOR) if name in args.images.split(",")
             for kind in ("archive", "grain") for task in ("archive", "denoise")]
    if args.workers == 1:  # in this process (CUDA: a forked worker cannot use it)
        rows = [fit_one(spec) for spec in specs]
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            rows = list(pool.map(fit_one, specs))
    summary = {}
    for kind in ("archive", "grain"):
        pairs = [(a, d) for a in rows for d in rows if a["task"] == "archive" and d["task"] == "denoise"
                 and a["image"] == d["image"] and a["kind"] == d["kind"] == kind]
        if kind == "archive":  # crops where the planted defects are
            pairs = [(a, d) for a, d in pairs if a["crop_defect_share"] > 0]
        entry = {"scans": len(pairs)}
        for rule in ("fixed", "oracle", "discrepancy"):
            gains = [a[rule] - d[rule] for a, d in pairs]
            entry[f"archive_minus_denoise_{rule}_mean"] = round(statistics.fmean(gains), 3)
            entry[f"archive_minus_denoise_{rule}_worst"] = round(min(gains), 3)
        for task in ("archive", "denoise"):
            mine = [a if task == "archive" else d for a, d in pairs]
            gaps = [r["discrepancy"] - r["oracle"] for r in mine]
            entry[task] = {"fixed_mean": round(statistics.fmean(r["fixed"] for r in mine), 3),
                           "oracle_mean": round(statistics.fmean(r["oracle"] for r in mine), 3),
                           "discrepancy_mean": round(statistics.fmean(r["discrepancy"] for r in mine), 3),
                           "discrepancy_gap_to_oracle_mean": round(statistics.fmean(gaps), 3),
                           "discrepancy_gap_to_oracle_worst": round(min(gaps), 3),
                           "discrepancy_saved_mean": round(statistics.fmean(1 - r["discrepancy_at"] / args.iterations
                                                                            for r in mine), 3)}
        summary[kind] = entry
    return {"rows": rows, "summary": summary}


def scale_part(args) -> dict:
    import tracemalloc

    clean = denoise_color("kodim03", "GT", args.data)
    tile = synthesize(clean, "archive:12", seed=5000).observed.pixels.numpy()
    height, width = 3000, 4000
    reps = (1, 1, -(-height // tile.shape[2]), -(-width // tile.shape[3]))
    scan = np.ascontiguousarray(np.tile(tile, reps)[:, :, :height, :width])  # float32, as a decoded scan
    rows = []
    for name, step in (("estimate_noise", estimate_noise), ("detect_defects", detect_defects)):
        step(scan[:, :, :256, :256])  # imports and first-call set-up out of the timing
        started = time.perf_counter()
        answer = step(scan)
        seconds = time.perf_counter() - started
        tracemalloc.start()
        step(scan)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows.append({"step": name, "seconds": round(seconds, 2), "peak_mib": round(peak / 2**20),
                     "input_mib": round(scan.nbytes / 2**20),
                     "answer": round(answer.sigma, 2) if name == "estimate_noise" else round(answer.fraction, 5)})
        print(rows[-1], flush=True)
    summary = {"size": f"{width}x{height}", **{r["step"]: f"{r['seconds']} s, peak {r['peak_mib']} MiB"
                                               for r in rows}}
    return {"rows": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="noise,masks,fits", help="noise, masks, fits, scale (comma-separated)")
    parser.add_argument("--preset", default="cpu-small", help="cpu-small, or archive (the paper's network)")
    parser.add_argument("--size", type=int, default=128, help="fits: centre crop side, px (0: the full image)")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--device", default="cpu", help="fits: cpu or cuda")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--images", default=",".join(DENOISE_COLOR), help="fits: these images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per fit")
    parser.add_argument("--workers", type=int, default=2, help="fits at once (processes)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    parts = args.parts.split(",")
    if unknown := set(parts) - {"noise", "masks", "fits", "scale"}:
        parser.error(f"unknown part(s) {sorted(unknown)}; expected some of noise, masks, fits, scale")
    for part, run in (("noise", noise_part), ("masks", masks_part), ("fits", fits_part), ("scale", scale_part)):
        if part not in parts:
            continue
        result = {"numpy": np.__version__, **run(args)}
        print(part, json.dumps(result["summary"], indent=1), flush=True)
        if part == "fits":
            result = {"preset": args.preset, "size": args.size, "iterations": args.iterations, "seed": args.seed,
                      "workers": args.workers, "threads": args.threads, **result}
            benchmark, device = f"archive-fits-{args.preset}-{args.size or 'full'}", args.device
        else:
            benchmark, device = f"archive-{part}", "cpu"
        print(f"wrote {write_results(benchmark, device_name(device), result, root=args.results_dir)}")


if __name__ == "__main__":
    main()

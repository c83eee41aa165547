"""Our core against a plain fp32 DIP (``tests/plain_dip.py``), task by task, over seeds.

Each case is one crop of ``../shared/data`` and one degradation, fitted by ``pipeline.core.restore``
(the task's paper preset at a shorter budget) and by the plain DIP with the same preset settings
(network widths, upsampling, lr, jitter, moving average, backtracking), the same observation and
the same budget, for seeds 1-4 each. Beside them: the degraded input (bicubic for super-resolution)
and the calibrated TV prior (``pipeline.core.baselines``), and, from the same seeds' outputs, the
two-restart average (seeds 1+2 and 3+4: what ``--restarts 2`` returns).

Then our options beyond the paper on the denoising and x4 cases, 4 seeds each: DIP-TV
(``--tv-weight``, its weight first chosen on crops of two calibration images, snail and zebra,
that no case uses) and the late-iterate average (``--average-last 100``). And the jpeg preset at its
full budget on a crop at JPEG quality 10, 20 and 30 (PSNR and SSIM against its input, along the fit).

    python -m benchmarks.parity [--workers 2] [--seeds 4] [--budget-scale 1.0]
    python -m benchmarks.parity --cases missing-pixels --first-seed 5 --parity-only   # 4 more seeds

Each worker runs one fit at a time on one torch thread. Writes ``benchmarks/results/parity/cpu.json``
(rewritten after every fit, so a partial run can be read); a run of other cases, seeds or budgets
names them: ``parity-missing-pixels-seeds-5-8/cpu.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, centre_crop, rgb, sample, write_results
from pipeline.core.baselines import degraded_input, tv_restore
from pipeline.core.images import Picture
from pipeline.core.metrics import psnr, ssim
from pipeline.core.noise import estimate_noise
from pipeline.core.options import Options
from pipeline.core.prepare import build_operator
from pipeline.core.restore import restore
from pipeline.core.synthetic import synthesize
from tests.plain_dip import lanczos2_downsampler, plain_fit  # the reference: test code, torch only

# name: (task, preset, image, (top, left) or None for the centre, size, degradation, iterations)
CASES = {
    "denoise": ("denoise", "denoise", "denoise_color_sigma25/kodim03", None, 64, "given", 600),
    "sr-x4": ("sr", "sr-x4", "set5_x4/bird_GT.png", None, 96, "downsample:4", 400),
    "sr-x8": ("sr", "sr-x8", "set5_x4/butterfly_GT.png", None, 96, "downsample:8", 400),
    "inpaint-text": ("inpaint", "inpaint-text", "samples/inpainting/kate.png", (192, 256), 64, "kate_mask", 600),
    "missing-pixels": ("inpaint", "missing-pixels", "samples/restoration/barbara.png", None, 64,
                       "mask:bernoulli:0.5", 600),
    "jpeg": ("jpeg", "jpeg", "denoise_color_sigma25/kodim12_GT.png", None, 64, "jpeg:20", 600),
}
CALIBRATION = {"denoise": ("samples/denoising/snail.jpg", "noise:25"), "sr-x4": ("samples/sr/zebra_GT.png",
                                                                                 "downsample:4")}
TV_GRID = (0.003, 0.03)
AVERAGE_LAST = 100
JPEG_QUALITIES = (10, 20, 30)


def load_crop(path: str, top_left, size: int) -> Picture:
    """The ``size`` crop of ``../shared/data/<path>`` as RGB, at ``top_left`` or the centre."""
    return rgb(centre_crop(sample(path), size, top_left))


def observation(name: str, spec: tuple, degradation: str | None = None):
    """(observed, clean, mask or None, scale or None) of a case; the degradation seeded by 0."""
    task, _, image, top_left, size, given, _ = spec
    degradation = degradation or given
    if given == "given":  # the suite's own noisy image (real sigma-25 noise, drawn once)
        clean = load_crop(image + "_GT.png", top_left, size)
        return load_crop(image + "_noisy.png", top_left, size), clean, None, None
    clean = load_crop(image, top_left, size)
    if given == "kate_mask":
        mask = load_crop("samples/inpainting/kate_mask.png", top_left, size).pixels[:, :1]
        mask = (mask > 0.5).float()
        return Picture(pixels=clean.pixels * mask, alpha=None, bit_depth=8), clean, mask, None
    made = synthesize(clean, degradation, seed=0)
    mask = made.mask.pixels if made.mask is not None else None
    return made.observed, made.reference, mask, made.scale


def run_one(job: dict) -> dict:
    """One fit (a worker's unit): ours or the plain DIP, of one case, seed and variant."""
    torch.set_num_threads(1)
    spec = CASES.get(job["case"]) or job["spec"]
    task, preset_name, *_, iterations = spec
    observed, clean, mask, scale = observation(job["case"], spec, job.get("degradation"))
    iterations = max(2, round((job.get("iterations") or iterations) * job["budget_scale"]))
    options = Options(task=task, preset=preset_name, scale=scale, iterations=iterations, seed=job["seed"],
                      tv_weight=job.get("tv_weight", 0.0), average_last=job.get("average_last", 0))
    started = time.perf_counter()
    history = None
    if job["impl"] == "ours":
        mask_picture = None if mask is None else Picture(pixels=mask, alpha=None, bit_depth=8)
        result = restore(observed, options, mask=mask_picture, reference=clean)
        image = result.picture.pixels
        history = [(e["iteration"], round(e["psnr_reference"], 3)) for e in result.fit.history
                   if "psnr_reference" in e]
    else:
        preset = options.resolve()
        net, fit = preset.net, preset.fit
        y = observed.pixels
        if task == "sr":
            forward = lambda x: lanczos2_downsampler(x, scale)  # noqa: E731
        elif mask is not None:
            forward, y = (lambda x: x * mask), y * mask  # noqa: E731
        else:
            forward = lambda x: x  # noqa: E731
        image = plain_fit(y, forward, tuple(clean.pixels.shape[-2:]), down=net.channels_down, up=net.channels_up,
                          skip=net.channels_skip, upsample=net.upsample_mode, lr=fit.lr, iterations=iterations,
                          reg_noise_std=fit.reg_noise_std, ema=fit.ema, backtrack=fit.backtrack, seed=job["seed"])
    seconds = time.perf_counter() - started
    return {**{k: v for k, v in job.items() if k != "spec"}, "iterations": iterations,
            "psnr": round(psnr(image, clean.pixels), 3), "ssim": round(ssim(image, clean.pixels), 4),
            "seconds": round(seconds, 1), "history": history, "image": image}


def baselines(name: str) -> dict:
    task, *_ = CASES[name]
    observed, clean, mask, scale = observation(name, CASES[name])
    mask_picture = None if mask is None else Picture(pixels=mask, alpha=None, bit_depth=8)
    operator = build_operator(Options(task=task, scale=scale), observed, mask_picture)
    y = observed.pixels
    sigma = estimate_noise(y).sigma if task in ("denoise", "jpeg") else None
    tv = tv_restore(operator, y, noise_sigma=sigma) if task != "jpeg" else None
    return {"input": round(psnr(degraded_input(operator, y), clean.pixels), 3),
            "input_ssim": round(ssim(degraded_input(operator, y), clean.pixels), 4),
            "tv": None if tv is None else round(psnr(tv, clean.pixels), 3)}


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 3), "std": round(statistics.stdev(values), 3) if len(values) > 1
            else 0.0, "min": min(values), "max": max(values)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--budget-scale", type=float, default=1.0, help="scale every budget (a quick smoke run)")
    parser.add_argument("--cases", help="Comma-separated cases to run (default: all)")
    parser.add_argument("--parity-only", action="store_true", help="Only ours against the plain DIP: no DIP-TV "
                        "calibration, variants or jpeg budget check")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    cases = list(CASES) if not args.cases else args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    torch.set_num_threads(1)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    common = {"budget_scale": args.budget_scale}
    # the default run is "parity"; another one names its cases, seeds and budget
    settings = ([] if cases == list(CASES) else cases) + \
        ([] if seeds == [1, 2, 3, 4] else [f"seeds-{seeds[0]}-{seeds[-1]}"]) + \
        ([] if args.budget_scale == 1.0 else [f"budget-{args.budget_scale:g}"])
    benchmark = "-".join(["parity", *settings])
    report = {"workers": args.workers, "threads_per_worker": 1, "seeds": seeds, "budget_scale": args.budget_scale,
              "cases": {}, "tv_calibration": {}, "jpeg_quality": {}}
    for name in cases:
        spec = CASES[name]
        report["cases"][name] = {"task": spec[0], "preset": spec[1], "image": spec[2], "size": spec[4],
                                 "degradation": spec[5], **baselines(name), "ours": {}, "plain": {}, "variants": {}}
    outputs: dict = {}

    def write() -> Path:
        return write_results(benchmark, "cpu", report, root=args.results_dir)

    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        # 1. DIP-TV's weight on the calibration crops (one seed), beside the weight 0.
        calibration, chosen = [], {}
        for case, (image, degradation) in CALIBRATION.items():
            if args.parity_only:
                break
            spec = (*CASES[case][:2], image, None, CASES[case][4], degradation, CASES[case][6])
            for weight in (0.0, *TV_GRID):
                calibration.append({**common, "case": f"calibration-{case}", "spec": spec, "impl": "ours",
                                    "seed": 1, "tv_weight": weight})
        for row in pool.imap_unordered(run_one, calibration):
            report["tv_calibration"].setdefault(row["case"], {})[str(row["tv_weight"])] = row["psnr"]
            write()
        # the best non-zero weight per task (even where 0 scores higher: the variant is then measured as a loss)
        if not args.parity_only:
            chosen = {case: max(TV_GRID, key=lambda w: report["tv_calibration"][f"calibration-{case}"][str(w)])
                      for case in CALIBRATION}
            report["tv_weight_chosen"] = chosen

        # 2. Parity, the variants and the jpeg budget check.
        jobs = [{**common, "case": name, "impl": impl, "seed": seed} for name in cases for seed in seeds
                for impl in ("ours", "plain")]
        for case, weight in ((c, w) for c, w in chosen.items() if c in cases):
            jobs += [{**common, "case": case, "impl": "ours", "seed": seed, "variant": "dip-tv", "tv_weight": weight}
                     for seed in seeds]
            jobs += [{**common, "case": case, "impl": "ours", "seed": seed, "variant": f"average-last-{AVERAGE_LAST}",
                      "average_last": AVERAGE_LAST} for seed in seeds]
        if not args.parity_only and "jpeg" in cases:
            jobs += [{**common, "case": "jpeg", "impl": "ours", "seed": 1, "variant": f"jpeg-{q}",
                      "degradation": f"jpeg:{q}", "iterations": 2400} for q in JPEG_QUALITIES]
        for row in pool.imap_unordered(run_one, jobs):
            case = report["cases"][row["case"]]
            image = row.pop("image")
            variant = row.get("variant")
            if variant and variant.startswith("jpeg-"):
                observed, clean, *_ = observation("jpeg", CASES["jpeg"], row["degradation"])
                report["jpeg_quality"][variant] = {
                    "input": round(psnr(observed.pixels, clean.pixels), 3),
                    "input_ssim": round(ssim(observed.pixels, clean.pixels), 4),
                    "psnr": row["psnr"], "ssim": row["ssim"], "iterations": row["iterations"],
                    "seconds": row["seconds"], "psnr_along_the_fit": row["history"]}
            elif variant:
                case["variants"].setdefault(variant, {})[str(row["seed"])] = row["psnr"]
            else:
                case[row["impl"]][str(row["seed"])] = {"psnr": row["psnr"], "ssim": row["ssim"],
                                                       "seconds": row["seconds"]}
                if row["impl"] == "ours":
                    outputs[(row["case"], row["seed"])] = image
            print(row["case"], row["impl"], variant or "", row["seed"], row["psnr"], f"{row['seconds']} s", flush=True)
            write()

    # 3. Summaries: mean and spread per case; the two-restart averages from seed pairs.
    for name, case in report["cases"].items():
        ours = [case["ours"][str(s)]["psnr"] for s in seeds if str(s) in case["ours"]]
        plain = [case["plain"][str(s)]["psnr"] for s in seeds if str(s) in case["plain"]]
        case["ours_summary"], case["plain_summary"] = spread(ours), spread(plain)
        case["ours_minus_plain_db"] = round(statistics.fmean(ours) - statistics.fmean(plain), 3)
        _, clean, *_ = observation(name, CASES[name])
        pairs = [(a, b) for a, b in zip(seeds[0::2], seeds[1::2], strict=False)]
        case["restarts_2"] = [round(psnr((outputs[(name, a)] + outputs[(name, b)]) / 2, clean.pixels), 3)
                              for a, b in pairs]
        for variant, rows in case["variants"].items():
            values = list(rows.values())
            case["variants"][variant] = {"per_seed": rows, **spread(values),
                                         "gain_db": round(statistics.fmean(values) - statistics.fmean(ours), 3)}
        case["restarts_2_gain_db"] = round(statistics.fmean(case["restarts_2"]) - statistics.fmean(
            [case["ours"][str(s)]["psnr"] for pair in pairs for s in pair]), 3)
        print(name, "ours", case["ours_summary"], "plain", case["plain_summary"], flush=True)
    report["seconds_total"] = round(sum(r["seconds"] for c in report["cases"].values() for impl in ("ours", "plain")
                                        for r in c[impl].values()), 1)
    print(f"wrote {write()}")


if __name__ == "__main__":
    main()

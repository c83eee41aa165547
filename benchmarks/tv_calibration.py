"""The TV prior's weights, chosen on images that no evaluation uses, and what they give there.

Calibration set: centre crops (``--size``, default 96) of six images of ``../shared/data`` that
none of the suites (set5-x4, denoise-color-25, inpaint-samples, archive-synthetic) evaluates:
samples/sr/zebra_GT, samples/denoising/snail, samples/feature_inversion/building and monkey,
samples/restoration/barbara (grey, as RGB) and samples/flash_no_flash/cave01_01_noflash.

For each setting (denoising at sigma 15, 25 and 50; x4 super-resolution; inpainting with 50% of the
pixels known), every weight of a grid is scored by the mean PSNR over the crops; the best is the one
``pipeline.core.baselines`` takes (denoising: per unit of sigma, at each of the three levels).

Then the calibrated weights (``pipeline.core.baselines.tv_weight``, the noise level estimated from the
observation as ``dip restore`` does) on the evaluation images: the nine noisy images of
denoise_color_sigma25 at full size (beside CBM3D's published outputs), and ``--sr-size`` centre crops
of Set5 x4 (PSNR-Y, the paper's protocol, against bicubic).

    python benchmarks/tv_calibration.py [--size 96] [--sr-size 128]

Writes benchmarks/results/tv_calibration.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.baselines import degraded_input, tv_restore  # noqa: E402  (after the sys.path insert)
from pipeline.core.images import Picture, read  # noqa: E402  (after the sys.path insert)
from pipeline.core.metrics import psnr, psnr_y  # noqa: E402  (after the sys.path insert)
from pipeline.core.noise import estimate_noise  # noqa: E402  (after the sys.path insert)
from pipeline.core.operators import Denoise, Inpainting, SuperResolution  # noqa: E402  (after the sys.path insert)
from pipeline.core.synthetic import synthesize  # noqa: E402  (after the sys.path insert)

DATA = ROOT.parent / "shared" / "data" / "samples"
IMAGES = ("sr/zebra_GT.png", "denoising/snail.jpg", "feature_inversion/building.jpg", "feature_inversion/monkey.jpg",
          "restoration/barbara.png", "flash_no_flash/cave01_01_noflash.jpg")
DENOISE_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0, 1.2)  # ROF weight per unit of sigma
LAMBDA_GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01)
SETTINGS = ("noise:15", "noise:25", "noise:50", "downsample:4", "mask:bernoulli:0.5")


def crop(path: Path, size: int) -> Picture:
    picture = read(path)
    x = picture.pixels
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
    return Picture(pixels=x[..., top:top + size, left:left + size].contiguous(), alpha=None, bit_depth=8)


def operator_of(spec: str, made):
    kind = spec.split(":")[0]
    if kind == "noise":
        return Denoise(float(spec.split(":")[1]))
    if kind == "downsample":
        return SuperResolution(made.scale, 3)
    return Inpainting(made.mask.pixels)


def evaluation(sr_size: int) -> dict:
    """The calibrated weights on the suites' own images (never used to choose them)."""
    denoise, sr = {}, {}
    folder = DATA.parent / "denoise_color_sigma25"
    for path in sorted(folder.glob("*_GT.png")):
        name = path.name[: -len("_GT.png")]
        clean, noisy = read(path).pixels, read(folder / f"{name}_noisy.png").pixels
        sigma = estimate_noise(noisy).sigma
        restored = tv_restore(Denoise(), noisy, noise_sigma=sigma)
        denoise[name] = {"input": round(psnr(noisy, clean), 3), "tv": round(psnr(restored, clean), 3),
                         "cbm3d": round(psnr(read(folder / f"{name}_bm3d.png").pixels, clean), 3),
                         "sigma_estimated": round(sigma, 2)}
        print("denoise", name, denoise[name], flush=True)
    for path in sorted((DATA.parent / "set5_x4").glob("*_GT.png")):
        made = synthesize(crop(path, sr_size), "downsample:4", seed=0)
        operator, y, clean = SuperResolution(4, 3), made.observed.pixels, made.reference.pixels
        sr[path.name[: -len("_GT.png")]] = {"bicubic": round(psnr_y(degraded_input(operator, y), clean), 3),
                                             "tv": round(psnr_y(tv_restore(operator, y), clean), 3)}
        print("sr", path.name, sr[path.name[: -len("_GT.png")]], flush=True)
    mean = {table: {key: round(float(np.mean([row[key] for row in rows.values()])), 3) for key in next(iter(
        rows.values()))} for table, rows in (("denoise_color_sigma25", denoise), ("set5_x4_crops", sr))}
    return {"denoise_color_sigma25": denoise, "set5_x4_crops": sr, "sr_size": sr_size, "means": mean}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--sr-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tv_calibration.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    crops = {Path(name).stem: crop(DATA / name, args.size) for name in IMAGES}
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "size": args.size,
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "settings": {}}
    for spec in SETTINGS:
        denoise = spec.startswith("noise")
        grid = DENOISE_GRID if denoise else LAMBDA_GRID
        rows = {}
        for index, (name, clean) in enumerate(crops.items()):
            made = synthesize(clean, spec, seed=index)
            operator, y = operator_of(spec, made), made.observed.pixels
            reference = made.reference.pixels
            scores = {}
            for value in grid:
                weight = value * operator.sigma / 255 if denoise else value
                scores[str(value)] = round(psnr(tv_restore(operator, y, weight=weight), reference), 3)
            rows[name] = {"input": round(psnr(degraded_input(operator, y), reference), 3), "tv": scores}
        means = {str(v): round(float(np.mean([r["tv"][str(v)] for r in rows.values()])), 3) for v in grid}
        best = max(means, key=means.get)
        report["settings"][spec] = {"grid": "weight per sigma" if denoise else "lambda", "mean_psnr": means,
                                    "best": float(best), "input_mean": round(float(np.mean(
                                        [r["input"] for r in rows.values()])), 3), "images": rows}
        print(spec, "input", report["settings"][spec]["input_mean"], means, "best", best, flush=True)
    report["denoise_per_sigma"] = {spec.split(":")[1]: report["settings"][spec]["best"] for spec in SETTINGS
                                   if spec.startswith("noise")}
    print("denoise weight per sigma", report["denoise_per_sigma"])
    report["evaluation"] = evaluation(args.sr_size)
    print(json.dumps(report["evaluation"]["means"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Make the small crops bundled in pipeline/samples/ (used by `dip demo` and the tests).

They come from the Deep Image Prior authors' public example images, as laid out in
../shared/data (see its README): denoising/F16_GT.png, sr/zebra_GT.png,
inpainting/kate.png + kate_mask.png. Run from the repository root:

    python scripts/make_samples.py [--data ../shared/data]
"""

import argparse
from pathlib import Path

from PIL import Image

# name -> (source file, crop box left, top, right, bottom)
CROPS = {
    "f16.png": ("samples/denoising/F16_GT.png", (224, 160, 288, 224)),
    "zebra.png": ("samples/sr/zebra_GT.png", (300, 160, 364, 224)),
    "kate.png": ("samples/inpainting/kate.png", (256, 160, 320, 224)),
    "kate_mask.png": ("samples/inpainting/kate_mask.png", (256, 160, 320, 224)),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "pipeline" / "samples")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (source, box) in CROPS.items():
        image = Image.open(args.data / source)
        image = image.convert("L" if "mask" in name else "RGB").crop(box)
        image.save(args.out / name, optimize=True)
        print(f"{args.out / name}: {image.size[0]}x{image.size[1]} from {source} {box}")


if __name__ == "__main__":
    main()

"""Draw the README's picture, docs/img/strip.png: degraded | restored | clean for the three demo samples.

It reads what `make demo` (`dip demo`) left under out/demo: restored/<id>.png and degraded/<id>.png
(the noisy and the low-resolution input), and the clean samples in pipeline/samples/. The inpainting
sample has no degraded file (its input is the clean image and a mask): its degraded panel is the
image with the mask's unknown pixels blacked out, which is what the fit saw. Each panel is scaled
up with nearest-neighbour sampling, so the pixels stay visible. Only Pillow is needed. Run from the
repository root after `make demo`:

    python scripts/make_strip.py [--demo out/demo] [--out docs/img/strip.png] [--panel 192]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "pipeline" / "samples"
# the demo's image id -> (its clean sample, its mask or None, the row's label)
ROWS = {
    "f16-noise25": ("f16.png", None, "denoising, noise sigma 25"),
    "zebra-x4": ("zebra.png", None, "4x super-resolution"),
    "kate-text": ("kate.png", "kate_mask.png", "text inpainting"),
}
COLUMNS = ("degraded", "restored", "clean")
MARGIN, LABEL_HEIGHT = 8, 22
BACKGROUND, INK = (255, 255, 255), (40, 40, 40)


def open_rgb(path: Path) -> Image.Image:
    if not path.is_file():
        sys.exit(f"make_strip: {path} is missing: run `make demo` first (or pass --demo)")
    return Image.open(path).convert("RGB")


def degraded_panel(demo: Path, image_id: str, clean: Image.Image, mask_name: str | None) -> Image.Image:
    """The image the fit saw: degraded/<id>.png, or for inpainting the clean image with its unknown
    pixels (black in the mask) blacked out."""
    if mask_name is None:
        return open_rgb(demo / "degraded" / f"{image_id}.png")
    mask = Image.open(SAMPLES / mask_name).convert("L").point(lambda v: 255 if v >= 128 else 0)
    return Image.composite(clean, Image.new("RGB", clean.size, (0, 0, 0)), mask)


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def strip(demo: Path, panel: int) -> Image.Image:
    """The picture: a header row naming the columns, then one row per sample with its label above."""
    width = MARGIN + len(COLUMNS) * (panel + MARGIN)
    height = LABEL_HEIGHT + len(ROWS) * (LABEL_HEIGHT + panel + MARGIN)
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    header, small = font(16), font(13)
    for c, name in enumerate(COLUMNS):
        draw.text((MARGIN + c * (panel + MARGIN), 2), name, fill=INK, font=header)
    y = LABEL_HEIGHT
    for image_id, (clean_name, mask_name, label) in ROWS.items():
        clean = open_rgb(SAMPLES / clean_name)
        panels = (degraded_panel(demo, image_id, clean, mask_name),
                  open_rgb(demo / "restored" / f"{image_id}.png"), clean)
        draw.text((MARGIN, y + 3), label, fill=INK, font=small)
        for c, image in enumerate(panels):
            picture.paste(image.resize((panel, panel), Image.Resampling.NEAREST),
                          (MARGIN + c * (panel + MARGIN), y + LABEL_HEIGHT))
        y += LABEL_HEIGHT + panel + MARGIN
    return picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=ROOT / "out" / "demo", help="dip demo's output folder")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "strip.png")
    parser.add_argument("--panel", type=int, default=192, help="side of each panel, px (the samples are 64x64)")
    args = parser.parse_args()
    if args.panel < 16:
        parser.error(f"--panel must be at least 16 px, got {args.panel}")
    picture = strip(args.demo, args.panel)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out, optimize=True)
    print(f"{args.out}: {picture.size[0]}x{picture.size[1]}")


if __name__ == "__main__":
    main()

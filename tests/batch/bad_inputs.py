"""The bad-input corpus, generated here (no binary files are committed).

``image_cases()`` gives (name, bytes, expected) for files a batch meets in real archives:
``expected`` is "ok" where the image must be restored, or a fragment of the error message
its error row must carry. ``manifest_cases()`` gives manifests that must be refused before
anything runs, with the fragment the refusal must name.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, format: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kwargs)
    return buffer.getvalue()


def gradient(width: int = 24, height: int = 20) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 255 // max(width, 1), yy * 255 // max(height, 1), 100 + 0 * xx], -1).astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's signature)."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    image = Image.fromarray(gradient(24, 16))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def image_cases() -> list[tuple[str, bytes, str]]:
    rgb = Image.fromarray(gradient())
    png, jpeg = encode(rgb), encode(rgb, "JPEG", quality=90)
    gray16 = Image.fromarray((np.arange(24 * 20).reshape(20, 24) * 100).astype(np.uint16))
    return [
        ("good-1", png, "ok"),
        ("good-2", encode(Image.fromarray(gradient(32, 24))), "ok"),
        ("zero-bytes", b"", "empty"),
        ("truncated-png", png[: len(png) // 2], "truncated"),
        ("truncated-jpeg", jpeg[: len(jpeg) // 2], "truncated"),
        ("text-as-png", b"hello, this is not an image\n" * 10, "not an image"),
        ("bomb", png_header_only(30000, 30000), "pixels"),
        ("tiny-1x1", encode(Image.fromarray(gradient(1, 1))), "ok"),
        ("tiny-3x7", encode(Image.fromarray(gradient(3, 7))), "ok"),
        ("over-limit", encode(Image.fromarray(gradient(200, 150))), "limit"),
        ("gray-16bit", encode(gray16), "ok"),
        ("palette", encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)), "ok"),
        ("cmyk-jpeg", encode(rgb.convert("CMYK"), "JPEG", quality=90), "ok"),
        ("rgba", encode(Image.fromarray(np.dstack([gradient(), np.full((20, 24), 128, np.uint8)]), "RGBA")), "ok"),
        ("la", encode(Image.fromarray(np.dstack([gradient()[..., 0], gradient()[..., 1]]), "LA")), "ok"),
        ("exif-rotated", exif_rotated_jpeg(), "ok"),
    ]


MAX_PIXELS = 20_000  # the batch's --max-pixels in the corpus run: "over-limit" (30,000 px) exceeds it


def manifest_cases() -> list[tuple[str, list[dict] | bytes, str]]:
    """(name, rows or raw bytes, fragment of the refusal)."""
    good = {"image_id": "fine", "uri": "x.png"}
    return [
        ("unknown-task", [good, {"image_id": "t", "uri": "x.png", "task": "colorize"}], "colorize"),
        ("bad-params", [good, {"image_id": "p", "uri": "x.png", "params": "{not json"}], "not valid JSON"),
        ("duplicate-id", [good, {"image_id": "fine", "uri": "y.png"}], "duplicate image_id"),
        ("dotdot-id", [good, {"image_id": "../escape", "uri": "x.png"}], "../escape"),
        ("absolute-id", [good, {"image_id": "/etc/passwd", "uri": "x.png"}], "/etc/passwd"),
        ("nul-id", [good, {"image_id": "a\x00b", "uri": "x.png"}], "storage key"),
        ("long-id", [good, {"image_id": "x" * 1000, "uri": "x.png"}], "storage key"),
        ("not-parquet", b"PAR1 this is not parquet at all", "not a readable Parquet"),
        ("no-uri", [{"image_id": "a"}], "lacks the required column(s) uri"),
        ("empty", [], "no rows"),
    ]

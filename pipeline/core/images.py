"""Decode image bytes into a `Picture` and encode pictures as PNG bytes.

Functions take `bytes` (or a local path in `read` and `write`) and return bytes: where the
bytes live is the storage module's job, not this one's.

Precision: 8-bit inputs give values k/255, 16-bit grayscale inputs (PNG/TIFF modes I;16*,
I) give k/65535 with `bit_depth=16`. Pillow reads 16-bit colour files, and 16-bit gray +
alpha PNGs (as RGBA), at 8 bits, so those come out with `bit_depth=8`: their low byte is
lost at decode, although `encode_png` can write them.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .formats import DEFAULT_MAX_PIXELS

_GRAY_MODES = ("1", "L", "LA", "La")
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")
_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Errors Pillow raises on corrupt or truncated data (besides its own error classes).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


class ImageError(ValueError):
    """Bytes that cannot be decoded into a picture; the message names the input and why."""


@dataclass(frozen=True)
class Picture:
    """A decoded image.

    pixels: [1, C, H, W] float32 in [0, 1]; C = 3 (RGB) or 1 (grayscale).
    alpha: [1, 1, H, W] float32 in [0, 1] (1 = opaque), or None when the image has none.
    bit_depth: 8 or 16, the precision the values came with (k/255 or k/65535).
    """

    pixels: torch.Tensor
    alpha: torch.Tensor | None = None
    bit_depth: int = 8

    def __post_init__(self):
        _check_planes(self.pixels, "pixels", channels=(1, 3))
        if self.pixels.dtype != torch.float32:
            raise ValueError(f"pixels must be float32, got {self.pixels.dtype}")
        if self.alpha is not None:
            _check_planes(self.alpha, "alpha", channels=(1,), size=tuple(self.pixels.shape[2:]))
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth!r}")

    @property
    def channels(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[2]

    @property
    def width(self) -> int:
        return self.pixels.shape[3]


def decode(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode PNG/JPEG/TIFF/WebP/... bytes into a Picture, upright per its EXIF orientation.

    `name` is only used in error messages. Images with more than `max_pixels` pixels
    (width * height; None = no limit of ours) are refused from their header, before any
    pixel data is decoded; Pillow's own decompression-bomb limit applies as well.
    Raises ImageError for empty, unidentifiable, truncated, corrupt, too large or
    zero-size data.
    """
    if len(data) == 0:
        raise ImageError(f"{name}: empty data (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused as a possible decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image Pillow can identify ({len(data)} bytes)") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{name}: unreadable image header: {exc}") from exc

    with image:
        width, height = image.size
        if width == 0 or height == 0:
            raise ImageError(f"{name}: zero-size image ({width}x{height})")
        if max_pixels is not None and width * height > max_pixels:
            raise ImageError(
                f"{name}: {width}x{height} = {width * height} pixels exceeds "
                f"max_pixels={max_pixels}"
            )
        try:
            image.load()  # decode everything now, so a truncated file fails here
            image = ImageOps.exif_transpose(image)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{name}: refused as a possible decompression bomb: {exc}") from exc
        except _DECODE_ERRORS as exc:
            raise ImageError(f"{name}: truncated or corrupt image data: {exc}") from exc
        return _to_picture(image, name)


def read(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    """Read and decode a local image file (see `decode`)."""
    return decode(Path(path).read_bytes(), name=str(path), max_pixels=max_pixels)


def write(path: str | Path, picture: Picture) -> None:
    """Encode ``picture`` as PNG (``encode_png``) and write it to a local ``.png`` file."""
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"{path}: only PNG is written (name the file .png)")
    Path(path).write_bytes(encode_png(picture))


def _to_picture(image: Image.Image, name: str) -> Picture:
    """A loaded Pillow image -> Picture: RGB or L, alpha kept apart, 16-bit gray kept."""
    mode = image.mode
    alpha = None
    if mode in _INT_MODES:
        gray = np.asarray(image)  # HxW uint16 (I;16*) or int32 (I)
        if gray.size and (gray.min() < 0 or gray.max() > 65535):
            raise ImageError(
                f"{name}: mode {mode} values span [{gray.min()}, {gray.max()}], "
                "outside the 16-bit range [0, 65535]"
            )
        planes = gray.astype(np.float32)[:, :, None] / 65535
        transparent = image.info.get("transparency")
        if isinstance(transparent, int):
            alpha = (gray != transparent).astype(np.float32)[:, :, None]
        bit_depth = 16
    elif mode == "F":
        raise ImageError(f"{name}: 32-bit float images (mode F) have no defined range")
    else:
        has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
        target = "L" if mode in _GRAY_MODES else "RGB"
        try:
            converted = image.convert(target + "A" if has_alpha else target)
        except ValueError as exc:  # modes Pillow cannot convert, e.g. LAB without a profile
            raise ImageError(f"{name}: cannot convert mode {mode} to {target}: {exc}") from exc
        array = np.asarray(converted)
        array = array.reshape(image.height, image.width, -1).astype(np.float32) / 255
        planes = array[:, :, :-1] if has_alpha else array
        alpha = array[:, :, -1:] if has_alpha else None
        bit_depth = 8
    return Picture(
        pixels=_hwc_to_tensor(planes),
        alpha=None if alpha is None else _hwc_to_tensor(alpha),
        bit_depth=bit_depth,
    )


def _hwc_to_tensor(array: np.ndarray) -> torch.Tensor:
    """HxWxC float32 array -> [1, C, H, W] contiguous tensor."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def encode_png(
    image: Picture | torch.Tensor,
    alpha: torch.Tensor | None = None,
    bit_depth: int | None = None,
) -> bytes:
    """Encode as PNG bytes: L or RGB, LA or RGBA when there is alpha.

    image: a Picture, or pixels [1, C, H, W] with C = 1 or 3, values in [0, 1] (clamped to
    [0, 1], then rounded to the nearest level).
    alpha: [1, 1, H, W] in [0, 1]; given, it replaces the Picture's own alpha.
    bit_depth: 8 or 16; None = the Picture's bit_depth (8 for a bare tensor).
    8-bit files are written by Pillow. Pillow cannot write 16-bit colour or 16-bit alpha,
    so 16-bit files (all colour types) are written by a small numpy + zlib PNG writer.
    """
    if isinstance(image, Picture):
        pixels = image.pixels
        alpha = image.alpha if alpha is None else alpha
        bit_depth = image.bit_depth if bit_depth is None else bit_depth
    else:
        pixels = image
        bit_depth = 8 if bit_depth is None else bit_depth
    _check_planes(pixels, "pixels", channels=(1, 3))
    if alpha is not None:
        _check_planes(alpha, "alpha", channels=(1,), size=tuple(pixels.shape[2:]))
        pixels = torch.cat([pixels.to(alpha.device), alpha], dim=1)
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")

    array = _quantize(pixels, levels=2**bit_depth - 1)  # HxWxC uint8 or uint16
    if bit_depth == 16:
        return _png16(array)
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buffer, "PNG")
    return buffer.getvalue()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[1, C, H, W] values in [0, 1] -> HxWxC uint8 numpy array, round(clamp(x) * 255)."""
    _check_planes(x, "x", channels=None)
    return _quantize(x, levels=255)


def _quantize(x: torch.Tensor, levels: int) -> np.ndarray:
    """[1, C, H, W] -> HxWxC round(clamp(x, 0, 1) * levels) as uint8 or uint16."""
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("image values contain NaN or inf; cannot quantize them")
    x = (x.clamp(0, 1) * levels).round()[0].permute(1, 2, 0)  # (H, W, C)
    return np.ascontiguousarray(x.numpy(), dtype=np.uint8 if levels == 255 else np.uint16)


def _png16(array: np.ndarray) -> bytes:
    """HxWxC uint16 (C = 1, 2, 3, 4: L, LA, RGB, RGBA) -> 16-bit PNG bytes."""
    height, width, channels = array.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    big_endian = np.ascontiguousarray(array, dtype=">u2")
    rows = big_endian.view(np.uint8).reshape(height, width * channels * 2)
    # Filter type 2 ("Up"): each byte minus the byte above, modulo 256.
    above = np.zeros_like(rows)
    above[1:] = rows[:-1]
    scanlines = np.empty((height, rows.shape[1] + 1), np.uint8)
    scanlines[:, 0] = 2
    scanlines[:, 1:] = rows - above
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def _check_planes(x, what: str, channels: tuple[int, ...] | None, size: tuple | None = None):
    """Check that x is a [1, C, H, W] tensor with C in `channels` and (H, W) == size."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor [1, C, H, W], got {type(x).__name__}")
    if x.ndim != 4 or x.shape[0] != 1 or (channels is not None and x.shape[1] not in channels):
        wanted = "C" if channels is None else " or ".join(map(str, channels))
        raise ValueError(f"{what} must have shape [1, {wanted}, H, W], got {list(x.shape)}")
    if size is not None and tuple(x.shape[2:]) != size:
        raise ValueError(f"{what} is {list(x.shape[2:])} but the pixels are {list(size)} (H, W)")

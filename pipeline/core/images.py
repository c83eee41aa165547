"""Decode image bytes into a `Picture`, at full precision and with its metadata
(``pipeline.core.metadata``); ``pipeline.core.encoding`` writes pictures back.

Functions take `bytes` (or a local path in `read`): where the bytes live is the storage
module's job, not this one's.

Precision: 8-bit inputs give values k/255, 16-bit inputs k/65535 with `bit_depth=16`: grayscale
through Pillow; 16-bit colour, and 16-bit gray + alpha, which Pillow reads at 8 bits, through
imagecodecs' libpng (PNG) and tifffile (TIFF: uncompressed, LZW, Deflate, PackBits; strips and
tiles; either byte order). Both are imported only when such a file is read or written, so the
core still runs where only Pillow is installed for 8-bit files.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .formats import DEFAULT_MAX_PIXELS
from .metadata import (
    ORIENTATION,
    Metadata,
    read_metadata,
)

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
    metadata: what the file carried besides pixels (ICC, EXIF, XMP, DPI, text), written back on encode.
    """

    pixels: torch.Tensor
    alpha: torch.Tensor | None = None
    bit_depth: int = 8
    metadata: Metadata = field(default_factory=Metadata)

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
        _refuse_float_tiff(data, name)
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
            metadata = read_metadata(image, data)
            orientation = image.getexif().get(ORIENTATION, 1)
            deep = _deep_array(data, image, name)  # 16-bit colour: HxWxC uint16, else None
            if deep is not None:
                return _deep_picture(_orient(deep, orientation), metadata, name)
            image.load()  # decode everything now, so a truncated file fails here
            image = ImageOps.exif_transpose(image)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{name}: refused as a possible decompression bomb: {exc}") from exc
        except _DECODE_ERRORS as exc:
            raise ImageError(f"{name}: truncated or corrupt image data: {exc}") from exc
        return _to_picture(image, name, metadata)


def read(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    """Read and decode a local image file (see `decode`)."""
    return decode(Path(path).read_bytes(), name=str(path), max_pixels=max_pixels)


# -----------------------------------------------------------------------------
# 16-bit colour: imagecodecs (PNG) and tifffile (TIFF)


def _deep_array(data: bytes, image: Image.Image, name: str) -> np.ndarray | None:
    """HxWxC uint16 pixels of a 16-bit colour (or gray + alpha) PNG or TIFF, which Pillow would
    read at 8 bits; None for every other file (Pillow decodes those)."""
    fmt = image.format
    if fmt == "PNG" and len(data) > 25 and data[12:16] == b"IHDR":
        bit_depth, colour_type = data[24], data[25]
        if bit_depth == 16 and colour_type in (2, 4, 6):  # RGB, gray + alpha, RGBA
            import imagecodecs

            array = imagecodecs.png_decode(data)
            return array.reshape(array.shape[0], array.shape[1], -1)
        return None
    if fmt != "TIFF":
        return None
    tags = getattr(image, "tag_v2", {})
    bits, samples = tags.get(258, (8,)), tags.get(277, 1)
    bits = bits if isinstance(bits, tuple) else (bits,)
    if tags.get(339) in (3, (3,), (3,) * samples) and samples > 1:
        raise ImageError(f"{name}: 32-bit float images have no defined range")
    if samples < 2 or 16 not in bits:
        return None
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            array = page.asarray()
            separate = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    except (tifffile.TiffFileError, ValueError, OSError, EOFError, struct.error) as exc:
        raise ImageError(f"{name}: truncated or corrupt TIFF data: {exc}") from exc
    if separate and array.ndim == 3:
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint16 or array.ndim != 3 or array.shape[2] not in (2, 3, 4):
        raise ImageError(f"{name}: a {array.dtype} TIFF of shape {list(array.shape)} is not 16-bit gray + alpha, "
                         "RGB or RGBA")
    return array


def _refuse_float_tiff(data: bytes, name: str) -> None:
    """ImageError naming a floating-point TIFF (Pillow cannot identify colour ones), else nothing."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            dtype = tif.pages[0].dtype
    except Exception:  # noqa: BLE001  (not a readable TIFF either: the caller's message stands)
        return
    if dtype is not None and dtype.kind == "f":
        raise ImageError(f"{name}: {dtype.itemsize * 8}-bit float images have no defined range")


# EXIF orientation -> the numpy operation that makes HxWxC pixels upright (as ImageOps.exif_transpose)
_ORIENT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """HxWxC pixels made upright for an EXIF orientation (1-8; anything else: as they are)."""
    return _ORIENT.get(orientation, lambda a: a)(array)


def _deep_picture(array: np.ndarray, metadata: Metadata, name: str) -> Picture:
    """HxWxC uint16 (C = 2, 3, 4: LA, RGB, RGBA) -> a 16-bit Picture, without a float HWC copy
    (peak: the array and the [C, H, W] float32 result)."""
    channels = array.shape[2]
    planes = np.empty((channels, array.shape[0], array.shape[1]), np.float32)
    for c in range(channels):
        np.multiply(array[:, :, c], np.float32(1 / 65535), out=planes[c], casting="unsafe")
    tensor = torch.from_numpy(planes)[None]  # (1, C, H, W)
    has_alpha = channels in (2, 4)
    pixels = tensor[:, :-1] if has_alpha else tensor
    alpha = tensor[:, -1:].contiguous() if has_alpha else None
    return Picture(pixels=pixels.contiguous() if has_alpha else pixels, alpha=alpha, bit_depth=16, metadata=metadata)


def _to_picture(image: Image.Image, name: str, metadata: Metadata | None = None) -> Picture:
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
        metadata=metadata or Metadata(),
    )


def _hwc_to_tensor(array: np.ndarray) -> torch.Tensor:
    """HxWxC float32 array -> [1, C, H, W] contiguous tensor."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


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


def _check_planes(x, what: str, channels: tuple[int, ...] | None, size: tuple | None = None):
    """Check that x is a [1, C, H, W] tensor with C in `channels` and (H, W) == size."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor [1, C, H, W], got {type(x).__name__}")
    if x.ndim != 4 or x.shape[0] != 1 or (channels is not None and x.shape[1] not in channels):
        wanted = "C" if channels is None else " or ".join(map(str, channels))
        raise ValueError(f"{what} must have shape [1, {wanted}, H, W], got {list(x.shape)}")
    if size is not None and tuple(x.shape[2:]) != size:
        raise ValueError(f"{what} is {list(x.shape[2:])} but the pixels are {list(size)} (H, W)")


def resize_alpha(alpha: torch.Tensor | None, height: int, width: int) -> torch.Tensor | None:
    """Alpha [1, 1, h, w] brought to the restored size (bicubic, clamped to [0, 1]; super-resolution)."""
    if alpha is None or alpha.shape[-2:] == (height, width):
        return alpha
    return torch.nn.functional.interpolate(alpha, size=(height, width), mode="bicubic",
                                           align_corners=False).clamp(0, 1)

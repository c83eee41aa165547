"""Decode image bytes into a `Picture`, at full precision and with its metadata
(``pipeline.core.metadata``); ``pipeline.core.encoding`` writes pictures back.

Functions take `bytes` (or a local path in `read`): where the bytes live is the storage
module's job, not this one's.

Precision: 8-bit inputs give values k/255, 16-bit inputs k/65535 with `bit_depth=16`: grayscale
through Pillow; 16-bit colour and 16-bit gray + alpha (which Pillow reads at 8 bits, or, as TIFF,
not at all) through imagecodecs' libpng (PNG) and tifffile (TIFF: uncompressed, LZW, Deflate,
PackBits; strips and tiles; contiguous or planar; either byte order; associated alpha undone).

Pages: one picture is restored per file. A multi-page TIFF or an animated PNG/WebP/GIF is refused
unless `page` picks one; a TIFF's thumbnails (reduced-resolution subfiles) are not pages.

imagecodecs is imported only when a 16-bit PNG is read, tifffile when a TIFF is, so the core still
runs where only Pillow is installed for 8-bit files other than TIFF.
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


def decode(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS, page: int | None = None) -> Picture:
    """Decode PNG/JPEG/TIFF/WebP/... bytes into a Picture, upright per its EXIF orientation.

    `name` is only used in error messages. Images with more than `max_pixels` pixels
    (width * height; None = no limit of ours) are refused from their header, before any
    pixel data is decoded; Pillow's own decompression-bomb limit applies as well.
    `page` (0-based) picks one page of a multi-page TIFF or one frame of an animated
    PNG/WebP/GIF; without it such a file is refused, never cut to its first page silently.
    A TIFF's reduced-resolution subfiles (thumbnails) and transparency masks are not pages.
    Raises ImageError for empty, unidentifiable, truncated, corrupt, too large, zero-size or
    multi-page data, and for a page out of range.
    """
    if len(data) == 0:
        raise ImageError(f"{name}: empty data (0 bytes)")
    if page is not None and (isinstance(page, bool) or not isinstance(page, int) or page < 0):
        raise ImageError(f"{name}: page must be an int >= 0 (0-based), got {page!r}")
    frame = None  # the frame Pillow reads; None: chosen from Pillow's own count of frames
    if data[:4] in _TIFF_MAGIC:
        choice = _choose_tiff_page(data, name, page)
        if choice is not None:
            frame, deep = choice
            if deep:
                return _deep_tiff_picture(data, frame, name, max_pixels)
    return _pillow_picture(data, name, max_pixels, page, frame)


def read(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, page: int | None = None) -> Picture:
    """Read and decode a local image file (see `decode`)."""
    return decode(Path(path).read_bytes(), name=str(path), max_pixels=max_pixels, page=page)


def _pillow_picture(data: bytes, name: str, max_pixels: int | None, page: int | None, frame: int | None) -> Picture:
    """Decode with Pillow (16-bit colour PNG through imagecodecs): frame `frame`, or the one
    `page` picks among Pillow's frames when `frame` is None."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused as a possible decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image Pillow can identify ({len(data)} bytes)") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{name}: unreadable image header: {exc}") from exc

    with image:
        try:
            frame = _pick_page(_pillow_pages(image), page, name) if frame is None else frame
            if frame:
                image.seek(frame)
            _check_size(image.width, image.height, name, max_pixels)
            metadata = read_metadata(image, data)
            orientation = image.getexif().get(ORIENTATION, 1)
            deep = _deep_png(data, image, frame, name)  # 16-bit colour PNG: HxWxC uint16, else None
            if deep is not None:
                return _deep_picture(_orient(deep, orientation), metadata, name)
            image.load()  # decode everything now, so a truncated file fails here
            image = ImageOps.exif_transpose(image)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{name}: refused as a possible decompression bomb: {exc}") from exc
        except ImageError:
            raise
        except _DECODE_ERRORS as exc:
            raise ImageError(f"{name}: truncated or corrupt image data: {exc}") from exc
        return _to_picture(image, name, metadata)


def _check_size(width: int, height: int, name: str, max_pixels: int | None) -> None:
    """ImageError for a zero-size image or one of more than `max_pixels` pixels (width * height)."""
    if width == 0 or height == 0:
        raise ImageError(f"{name}: zero-size image ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}")


# -----------------------------------------------------------------------------
# Pages and frames


def _pick_page(pages: list[int], page: int | None, name: str) -> int:
    """The frame (IFD) index to read among `pages` (the frame indices that are pages): the only
    one, or the `page`-th (0-based)."""
    if page is None and len(pages) > 1:
        raise ImageError(f"{name}: {len(pages)} pages: only single-page images are restored; "
                         "pick one with --page (0-based)")
    if page is not None and page >= len(pages):
        raise ImageError(f"{name}: page {page} is out of range: the image has {len(pages)} page(s), "
                         f"numbered from 0")
    return pages[page or 0]


_NOT_PAGES = {"PSD"}  # Pillow's frames of these formats are layers of the one picture
_THUMBNAIL_MP_TYPES = ("Large Thumbnail (VGA Equivalent)", "Large Thumbnail (Full HD Equivalent)")


def _pillow_pages(image: Image.Image) -> list[int]:
    """The frames of a Pillow image that are pages: all of them (animated PNG/WebP/GIF, ...),
    the composite only of a layered PSD, and no camera preview of an MPO (a JPEG's MP
    "Large Thumbnail" images)."""
    if image.format in _NOT_PAGES:
        return [0]
    count = getattr(image, "n_frames", 1)
    if image.format == "MPO":
        entries = getattr(image, "mpinfo", {}).get(0xB002, [])
        kept = [i for i, e in enumerate(entries[:count]) if e["Attribute"]["MPType"] not in _THUMBNAIL_MP_TYPES]
        return kept or [0]
    return list(range(count))


# -----------------------------------------------------------------------------
# 16-bit colour PNG: imagecodecs


def _deep_png(data: bytes, image: Image.Image, frame: int, name: str) -> np.ndarray | None:
    """HxWxC uint16 pixels of a 16-bit colour (or gray + alpha) PNG, which Pillow would read at
    8 bits; None for every other file (Pillow decodes those)."""
    if image.format != "PNG" or len(data) <= 25 or data[12:16] != b"IHDR":
        return None
    bit_depth, colour_type = data[24], data[25]
    if bit_depth != 16 or colour_type not in (2, 4, 6):  # RGB, gray + alpha, RGBA
        return None
    if frame:
        raise ImageError(f"{name}: frame {frame} of an animated 16-bit PNG cannot be read at 16 bits")
    import imagecodecs

    array = imagecodecs.png_decode(data)  # the default image
    return array.reshape(array.shape[0], array.shape[1], -1)


# -----------------------------------------------------------------------------
# TIFF: pages and 16-bit colour or gray + alpha through tifffile

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, either byte order
_NOT_A_PAGE = 1 | 4  # NewSubfileType bits: a reduced-resolution image (thumbnail), a transparency mask
_ASSOCIATED_ALPHA = 1  # ExtraSamples: associated (premultiplied) alpha; 2 is unassociated


def _choose_tiff_page(data: bytes, name: str, page: int | None) -> tuple[int, bool] | None:
    """(IFD index, deep) of the TIFF page to read, deep when it is 16-bit with 2 or more samples
    (tifffile reads it: Pillow refuses gray + alpha and reads colour at 8 bits); None when tifffile
    cannot parse the file (Pillow tries it and words the error).

    The pages are tifffile's `pages` (the top-level IFDs, the next-IFD chain Pillow's frames follow;
    SubIFDs are not among them) less the reduced-resolution and transparency-mask subfiles.
    tifffile's `series` is not used: it groups same-shaped pages into one array, and counts a
    reduced IFD as a pyramid level of its page.
    """
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            ifds = [(p.dtype, p.samplesperpixel, p.subfiletype) for p in tif.pages]
    except Exception:  # noqa: BLE001  (not a TIFF tifffile can parse: Pillow's reading and message stand)
        return None
    pages = [i for i, (_, _, kind) in enumerate(ifds) if not kind & _NOT_A_PAGE] or list(range(len(ifds)))
    index = _pick_page(pages, page, name)
    dtype, samples, _ = ifds[index]
    if dtype is not None and dtype.kind == "f":
        raise ImageError(f"{name}: {dtype.itemsize * 8}-bit float images have no defined range")
    return index, dtype == np.uint16 and samples >= 2


def _deep_tiff_picture(data: bytes, index: int, name: str, max_pixels: int | None) -> Picture:
    """The 16-bit Picture of IFD `index` (16-bit gray + alpha, RGB or RGBA; contiguous or planar),
    upright, with its metadata. Associated (premultiplied) alpha is undone: the pixels are straight
    colour (`_unpremultiply`)."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[index]
        _check_size(page.imagewidth, page.imagelength, name, max_pixels)
        _check_bomb(page.imagewidth, page.imagelength, name)
        photometric, samples = page.photometric, page.samplesperpixel
        if (photometric, samples) not in ((tifffile.PHOTOMETRIC.MINISBLACK, 2), (tifffile.PHOTOMETRIC.RGB, 3),
                                          (tifffile.PHOTOMETRIC.RGB, 4)):
            raise ImageError(f"{name}: a 16-bit {photometric.name} TIFF with {samples} samples is not read "
                             "(16-bit gray + alpha, RGB and RGBA are)")
        try:
            array = page.asarray()
        except Exception as exc:  # noqa: BLE001  (tifffile and its codecs raise many kinds)
            raise ImageError(f"{name}: truncated or corrupt TIFF data: {exc}") from exc
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and array.ndim == 3:
            array = array.transpose(1, 2, 0)  # (S, H, W) -> (H, W, S)
        if array.dtype != np.uint16 or array.shape != (page.imagelength, page.imagewidth, samples):
            raise ImageError(f"{name}: a {array.dtype} TIFF page of shape {list(array.shape)} is not "
                             f"{page.imagelength}x{page.imagewidth} 16-bit pixels of {samples} samples")
        if samples in (2, 4) and page.extrasamples[:1] == (_ASSOCIATED_ALPHA,):
            array = _unpremultiply(array)
        metadata = read_metadata(_TiffTags(data, page.offset, tif.byteorder, tif.is_bigtiff), data)
        orientation = page.tags.valueof(ORIENTATION, 1)
    return _deep_picture(_orient(array, orientation), metadata, name)


def _check_bomb(width: int, height: int, name: str) -> None:
    """Pillow's decompression-bomb limit (twice `Image.MAX_IMAGE_PIXELS`), for files Pillow does not open."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > 2 * limit:
        raise ImageError(f"{name}: refused as a possible decompression bomb: {width}x{height} = "
                         f"{width * height} pixels exceeds twice Pillow's MAX_IMAGE_PIXELS={limit}")


def _unpremultiply(array: np.ndarray) -> np.ndarray:
    """HxWxC uint16, colour premultiplied by alpha (the last channel) -> straight colour, in place:
    round(colour * 65535 / alpha), at most 65535; where alpha is 0 the colour stays as stored (0 in a
    well-formed file)."""
    alpha = array[:, :, -1].astype(np.uint64)
    divisor = np.maximum(alpha, 1)
    for c in range(array.shape[2] - 1):
        straight = (array[:, :, c].astype(np.uint64) * 65535 + divisor // 2) // divisor  # rounded integer division
        array[:, :, c] = np.where(alpha > 0, np.minimum(straight, 65535), array[:, :, c])
    return array


class _TiffTags:
    """What `read_metadata` reads of a Pillow TIFF image (format, info, getexif, tag_v2), for an
    IFD Pillow cannot open (16-bit gray + alpha): its tags through Pillow's own EXIF reader, and
    `info`'s ICC profile, XMP and dpi set as Pillow's TIFF reader sets them."""

    format = "TIFF"

    def __init__(self, data: bytes, offset: int, byteorder: str, bigtiff: bool):
        self.tag_v2 = Image.Exif()
        self.tag_v2.endian, self.tag_v2.bigtiff = byteorder, bigtiff
        self.tag_v2.load_from_fp(io.BytesIO(data), offset)
        tags = self.tag_v2
        self.info = {}
        if tags.get(34675):
            self.info["icc_profile"] = tags[34675]
        if tags.get(700):
            self.info["xmp"] = tags[700]
        xres, yres, unit = tags.get(282, 1), tags.get(283, 1), tags.get(296)
        if xres and yres and unit in (None, 2, 3):  # none (read as inch), inch, centimetre
            scale = 2.54 if unit == 3 else 1
            self.info["dpi"] = (xres * scale, yres * scale)

    def getexif(self) -> Image.Exif:
        return self.tag_v2


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

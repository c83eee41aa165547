"""Decode image bytes into a `Picture` and encode pictures as PNG or TIFF bytes, at full precision
and with their metadata (``pipeline.core.metadata``).

Functions take `bytes` (or a local path in `read` and `write`) and return bytes: where the
bytes live is the storage module's job, not this one's.

Precision: 8-bit inputs give values k/255, 16-bit inputs k/65535 with `bit_depth=16`: grayscale
through Pillow; 16-bit colour, and 16-bit gray + alpha, which Pillow reads at 8 bits, through
imagecodecs' libpng (PNG) and tifffile (TIFF: uncompressed, LZW, Deflate, PackBits; strips and
tiles; either byte order). Both are imported only when such a file is read or written, so the
core still runs where only Pillow is installed for 8-bit files.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .formats import DEFAULT_MAX_PIXELS
from .metadata import (
    DESCRIPTIVE_TAGS,
    EXIF_IFD,
    ORIENTATION,
    PROVENANCE_KEY,
    SOFTWARE,
    XMP_PNG_KEY,
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


def write(path: str | Path, picture: Picture, provenance: dict | None = None) -> None:
    """Encode ``picture`` (PNG or TIFF, from the file name's suffix) and write it to a local file."""
    from .formats import output_format

    Path(path).write_bytes(encode(picture, output_format(str(path)), provenance))


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


def encode(picture: Picture, fmt: str = "png", provenance: dict | None = None) -> bytes:
    """``picture`` as ``fmt`` ("png" or "tiff", Deflate) bytes at its bit depth, alpha carried, with
    its metadata (ICC profile, EXIF with orientation 1 and our Software, XMP, DPI, text) and, given,
    the provenance record (``pipeline.core.metadata.provenance``)."""
    if fmt == "png":
        return encode_png(picture, provenance=provenance)
    if fmt == "tiff":
        return encode_tiff(picture, provenance=provenance)
    raise ValueError(f"cannot encode format {fmt!r}; expected png or tiff")


def _levels(image: Picture | torch.Tensor, alpha: torch.Tensor | None, bit_depth: int | None) -> np.ndarray:
    """HxWxC uint8 or uint16 (C = 1, 2, 3, 4: L, LA, RGB, RGBA) of a Picture or bare pixels."""
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
    return _quantize(pixels, levels=2**bit_depth - 1)


def encode_png(
    image: Picture | torch.Tensor,
    alpha: torch.Tensor | None = None,
    bit_depth: int | None = None,
    provenance: dict | None = None,
) -> bytes:
    """Encode as PNG bytes: L or RGB, LA or RGBA when there is alpha.

    image: a Picture, or pixels [1, C, H, W] with C = 1 or 3, values in [0, 1] (clamped to
    [0, 1], then rounded to the nearest level).
    alpha: [1, 1, H, W] in [0, 1]; given, it replaces the Picture's own alpha.
    bit_depth: 8 or 16; None = the Picture's bit_depth (8 for a bare tensor).
    8-bit files are written by Pillow; 16-bit ones by libpng (imagecodecs), with the metadata
    chunks Pillow writes (iCCP, eXIf, pHYs, tEXt/iTXt) put in after IHDR.
    """
    array = _levels(image, alpha, bit_depth)  # HxWxC uint8 or uint16
    metadata = image.metadata if isinstance(image, Picture) else Metadata()
    options = _png_options(metadata, provenance)
    plane = array[:, :, 0] if array.shape[2] == 1 else array
    if array.dtype == np.uint8:
        buffer = io.BytesIO()
        Image.fromarray(plane).save(buffer, "PNG", **options)
        return buffer.getvalue()
    import imagecodecs

    pixels = imagecodecs.png_encode(np.ascontiguousarray(plane))
    if not options:
        return pixels
    buffer = io.BytesIO()  # the same metadata on a 1x1 image: Pillow encodes the chunks
    Image.new("RGB", (1, 1)).save(buffer, "PNG", **options)
    return _with_chunks(pixels, [c for c in _png_chunks(buffer.getvalue()) if c[4:8] not in _PNG_PIXEL_CHUNKS])


_PNG_PIXEL_CHUNKS = (b"IHDR", b"IDAT", b"IEND", b"PLTE", b"tRNS", b"sBIT")


def _png_options(metadata: Metadata, provenance: dict | None) -> dict:
    """Pillow's PNG save options for ``metadata`` and the provenance record."""
    from PIL.PngImagePlugin import PngInfo

    options, info = {}, PngInfo()
    for key, value in metadata.text.items():
        info.add_itxt(key, value) if not value.isascii() else info.add_text(key, value)
    if metadata.xmp:
        info.add_itxt(XMP_PNG_KEY, metadata.xmp.decode("utf-8", "replace"))
    if provenance:
        info.add_text(PROVENANCE_KEY, json.dumps(provenance, sort_keys=True))
    if info.chunks:
        options["pnginfo"] = info
    if metadata.icc:
        options["icc_profile"] = metadata.icc
    if metadata.dpi:
        options["dpi"] = metadata.dpi
    exif = _our_exif(metadata)
    if exif:
        options["exif"] = exif
    return options


def _our_exif(metadata: Metadata) -> bytes | None:
    """The picture's EXIF block with orientation 1 and our Software tag (None without EXIF)."""
    if not metadata.exif:
        return None
    exif = Image.Exif()
    exif.load(metadata.exif)
    exif[ORIENTATION] = 1
    exif[SOFTWARE] = _software()
    return exif.tobytes()


def _software() -> str:
    from .metadata import provenance

    return f"dip {provenance()['version']}"


def _png_chunks(data: bytes) -> list[bytes]:
    """A PNG's chunks, each whole (length, type, body, CRC), after the 8-byte signature."""
    chunks, at = [], 8
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        chunks.append(data[at:at + 12 + length])
        at += 12 + length
    return chunks


def _with_chunks(png: bytes, extra: list[bytes]) -> bytes:
    """``png`` with the chunks ``extra`` put right after its IHDR (ancillary chunks that must
    come before the image data)."""
    chunks = _png_chunks(png)
    return png[:8] + chunks[0] + b"".join(extra) + b"".join(chunks[1:])


def encode_tiff(picture: Picture, provenance: dict | None = None) -> bytes:
    """Encode as a Deflate-compressed TIFF (tifffile): gray or RGB, with unassociated alpha, 8 or
    16 bits; the ICC profile, XMP, resolution (inch), the descriptive tags (Artist, Copyright,
    ImageDescription with the provenance as its last line, DateTime, Make, Model), Software ours,
    orientation 1, and the EXIF IFD (``_add_exif_ifd``: tifffile writes none)."""
    import tifffile

    array = _levels(picture, None, None)  # HxWxC
    metadata, channels = picture.metadata, array.shape[2]
    text = metadata.text
    description = "\n".join(line for line in (text.get("ImageDescription") or "").splitlines()
                            if not line.startswith(PROVENANCE_KEY + " "))  # a restored file restored again
    if provenance:
        line = f"{PROVENANCE_KEY} {json.dumps(provenance, sort_keys=True)}"
        description = f"{description}\n{line}" if description else line
    extratags = [(tag, "s", 0, text[name], True) for tag, name in DESCRIPTIVE_TAGS.items()
                 if name in text and name not in ("ImageDescription", "DateTime")]
    extratags.append((ORIENTATION, "H", 1, 1, True))
    if metadata.xmp:
        extratags.append((700, "B", len(metadata.xmp), metadata.xmp, True))
    exif_ifd = {}
    if metadata.exif:
        block = Image.Exif()
        block.load(metadata.exif)
        exif_ifd = dict(block.get_ifd(EXIF_IFD))
    if exif_ifd:
        extratags.append((_EXIF_PLACEHOLDER, "I", 1, 0, True))
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer, array if channels > 1 else array[:, :, 0], photometric="rgb" if channels >= 3 else "minisblack",
        planarconfig="contig" if channels > 1 else None, extrasamples=("unassalpha",) if channels in (2, 4) else None,
        compression="zlib", iccprofile=metadata.icc, resolution=metadata.dpi, resolutionunit="INCH" if metadata.dpi
        else None, software=_software(), description=description or None, datetime=text.get("DateTime"),
        metadata=None, extratags=extratags)
    return _add_exif_ifd(buffer.getvalue(), exif_ifd) if exif_ifd else buffer.getvalue()


_EXIF_PLACEHOLDER = 34664  # an unused tag code just below ExifIFD (34665), so the entries stay sorted


def _add_exif_ifd(data: bytes, tags: dict) -> bytes:
    """``data`` (a classic TIFF written with the placeholder tag) with the EXIF IFD ``tags`` appended,
    serialised by Pillow, and the placeholder turned into the ExifIFD tag pointing at it."""
    import tifffile
    from PIL import TiffImagePlugin

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        if tif.is_bigtiff:
            return data  # 8-byte offsets: not patched here
        byteorder, at = tif.byteorder, tif.pages[0].tags[_EXIF_PLACEHOLDER].valueoffset
    out = bytearray(data + b"\x00" * (len(data) % 2))  # an IFD starts on a word boundary
    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II" if byteorder == "<" else b"MM")
    for tag, value in tags.items():
        ifd[tag] = value
    start = len(out)
    out += ifd.tobytes(start)
    out[at - 8:at - 6] = struct.pack(byteorder + "H", EXIF_IFD)  # the entry: code, type, count, value
    out[at:at + 4] = struct.pack(byteorder + "I", start)
    return bytes(out)


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

"""Encode pictures as PNG or TIFF bytes at their bit depth, alpha carried, with their metadata
(ICC profile, EXIF, XMP, DPI, descriptive text; ``pipeline.core.metadata``) and the provenance of
the restoration.

8-bit PNG is written by Pillow; 16-bit PNG by libpng (imagecodecs), with the metadata chunks
Pillow encodes; TIFF by tifffile (Deflate), with the EXIF IFD that tifffile does not write
appended in Pillow's serialisation. imagecodecs and tifffile are imported only when needed.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import Picture, _check_planes, _quantize
from .metadata import DESCRIPTIVE_TAGS, EXIF_IFD, ORIENTATION, PROVENANCE_KEY, SOFTWARE, XMP_PNG_KEY, Metadata


def write(path: str | Path, picture: Picture, provenance: dict | None = None) -> None:
    """Encode ``picture`` (PNG or TIFF, from the file name's suffix) and write it to a local file."""
    from .formats import output_format

    Path(path).write_bytes(encode(picture, output_format(str(path)), provenance))




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

"""What a file says about its image, besides the pixels, and how it is carried to the restored file.

``Metadata`` holds the ICC profile (bytes, carried byte for byte), the EXIF block (its orientation
reset to 1: the pixels are written upright), the XMP packet, the resolution (dots per inch) and the
descriptive fields (TIFF's Artist, Copyright, ImageDescription, DateTime, Make, Model, and a PNG's
text chunks). ``read_metadata`` takes them from a Pillow image (and, for TIFF, from tifffile's
tags); ``pipeline.core.encoding.encode`` writes them back, with the provenance of the restoration
(``provenance``: tool and version, task, preset, iterations, seed, configuration hash).

Pixels are never converted between colour spaces, so the profile stays valid for them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from PIL import Image

# TIFF / EXIF IFD0 tags carried as text
DESCRIPTIVE_TAGS = {315: "Artist", 33432: "Copyright", 270: "ImageDescription", 306: "DateTime", 271: "Make",
                    272: "Model"}
ORIENTATION, SOFTWARE, EXIF_IFD = 274, 305, 0x8769
XMP_PNG_KEY = "XML:com.adobe.xmp"
PROVENANCE_KEY = "dip:provenance"  # a PNG text chunk; in TIFF, a line of ImageDescription
PROVENANCE_FIELDS = ("tool", "version", "task", "preset", "iterations", "seed", "config_hash")


@dataclass(frozen=True)
class Metadata:
    """What a file carries besides pixels (all optional)."""

    format: str | None = None  # "png", "tiff", "jpeg", "webp", "bmp", ... as read
    icc: bytes | None = None  # the ICC profile, byte for byte
    exif: bytes | None = None  # an EXIF block (TIFF structure, as Pillow writes it), orientation 1
    xmp: bytes | None = None  # the XMP packet (UTF-8 XML)
    dpi: tuple[float, float] | None = None  # horizontal, vertical resolution in dots per inch
    text: dict = field(default_factory=dict)  # descriptive fields and PNG text chunks, str -> str

    def summary(self) -> dict:
        """JSON-able: sizes of the binary blocks, the EXIF tags by name, resolution and text."""
        exif = {}
        if self.exif:
            block = Image.Exif()
            block.load(self.exif)
            named = {**block, **block.get_ifd(EXIF_IFD)}
            exif = {Image.ExifTags.TAGS.get(k, str(k)): _plain(v) for k, v in named.items() if k != EXIF_IFD}
        return {"format": self.format, "icc_bytes": len(self.icc) if self.icc else 0,
                "xmp_bytes": len(self.xmp) if self.xmp else 0, "dpi": list(self.dpi) if self.dpi else None,
                "exif": exif, "text": dict(self.text)}


def read_metadata(image: Image.Image, data: bytes) -> Metadata:
    """The metadata of a Pillow image opened from ``data`` (before any transpose)."""
    fmt = (image.format or "").lower() or None
    info = image.info
    xmp = info.get("xmp") or info.get(XMP_PNG_KEY)
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    dpi = info.get("dpi")
    source = image.getexif()
    text = {name: str(source[tag]).strip("\x00") for tag, name in DESCRIPTIVE_TAGS.items() if tag in source}
    if fmt == "png":
        text.update({k: str(v) for k, v in getattr(image, "text", {}).items() if k != XMP_PNG_KEY})
    if fmt == "tiff" and not xmp:
        xmp = _tiff_tag(image, 700)
    exif = Image.Exif()
    if fmt == "tiff":  # IFD0 of a TIFF is the image's own structure: keep the descriptive tags and the EXIF IFD
        for tag in DESCRIPTIVE_TAGS:
            if tag in source:
                exif[tag] = source[tag]
        sub = source.get_ifd(EXIF_IFD)
        if sub:
            exif.get_ifd(EXIF_IFD).update(sub)
    elif len(source) or source.get_ifd(EXIF_IFD):
        exif.load(source.tobytes())  # a copy: Pillow's own is still read by exif_transpose
    exif_bytes = None
    if len(exif) or exif.get_ifd(EXIF_IFD):
        exif[ORIENTATION] = 1  # the pixels are made upright at decode
        exif_bytes = exif.tobytes()
    return Metadata(format=fmt, icc=info.get("icc_profile") or None, exif=exif_bytes, xmp=bytes(xmp) if xmp else None,
                    dpi=(float(dpi[0]), float(dpi[1])) if dpi else None, text=text)


def _tiff_tag(image: Image.Image, tag: int):
    value = getattr(image, "tag_v2", {}).get(tag)
    return bytes(value) if isinstance(value, (bytes, bytearray, tuple)) and value else None


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace")
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value if isinstance(value, (int, str)) else str(value)


def provenance(**values) -> dict:
    """The provenance record of a restoration: ``PROVENANCE_FIELDS`` (tool "dip" and its version
    filled in when not given)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        dip_version = version("dip")
    except PackageNotFoundError:  # a checkout that was not installed
        dip_version = "unknown"
    record = {"tool": "dip", "version": dip_version, **values}
    unknown = sorted(set(record) - set(PROVENANCE_FIELDS))
    if unknown:
        raise ValueError(f"unknown provenance field(s) {unknown}; known: {PROVENANCE_FIELDS}")
    return record


def read_provenance(text: dict) -> dict | None:
    """The provenance record in a file's text fields (a PNG chunk, or a line of TIFF's
    ImageDescription), or None when the file has none."""
    if PROVENANCE_KEY in text:
        return json.loads(text[PROVENANCE_KEY])
    marker = PROVENANCE_KEY + " "
    lines = [line for line in (text.get("ImageDescription") or "").splitlines() if line.startswith(marker)]
    return json.loads(lines[-1][len(marker):]) if lines else None  # the newest, should there be several


def scaled_dpi(metadata: Metadata, factor: float) -> Metadata:
    """The metadata of an image ``factor`` times larger (super-resolution): the same print size."""
    if factor == 1 or not metadata.dpi:
        return metadata
    return replace(metadata, dpi=(metadata.dpi[0] * factor, metadata.dpi[1] * factor))

"""Archival fidelity: 16-bit colour decoded exactly (PNG via libpng, TIFF via tifffile in every
layout), written back at 16 bits as PNG or TIFF, ICC, EXIF, XMP, DPI and descriptive tags carried,
orientation made upright, provenance written and read back. Files are made with numpy and the
codecs (tifffile, imagecodecs, Pillow), not with dip's own writer."""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from pipeline.core.encoding import encode
from pipeline.core.formats import batch_format, output_format
from pipeline.core.images import ImageError, _orient, decode
from pipeline.core.metadata import read_provenance

ICC = b"\x00\x00\x02\x0cfake-icc-profile" + bytes(range(256))  # carried as bytes: any content
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
RNG = np.random.default_rng(12)


def deep(h=19, w=23, c=3) -> np.ndarray:
    return RNG.integers(0, 65536, (h, w, c), dtype=np.uint16)


def levels(picture) -> np.ndarray:
    """HxWxC integer levels of a 16-bit picture, alpha last."""
    planes = picture.pixels if picture.alpha is None else np.concatenate([picture.pixels, picture.alpha], axis=1)
    return np.rint(np.asarray(planes)[0].transpose(1, 2, 0) * 65535).astype(np.int64)


def tiff_bytes(array, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16_bit_png_decodes_exactly(channels):
    array = deep(c=channels)
    picture = decode(imagecodecs.png_encode(array), name="deep.png")
    assert picture.bit_depth == 16 and picture.metadata.format == "png"
    assert (picture.alpha is not None) == (channels in (2, 4))
    assert np.abs(levels(picture) - array).max() == 0


@pytest.mark.parametrize("compression", [None, "lzw", "zlib", "packbits"])
@pytest.mark.parametrize("tile", [None, (16, 16)])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_16_bit_tiff_decodes_exactly_in_every_layout(compression, tile, byteorder):
    array = deep(37, 45, 3)
    data = tiff_bytes(array, photometric="rgb", compression=compression, tile=tile, byteorder=byteorder)
    picture = decode(data, name="scan.tif")
    assert picture.bit_depth == 16 and picture.metadata.format == "tiff"
    assert np.abs(levels(picture) - array).max() == 0


def test_16_bit_rgba_and_planar_tiff_decode_exactly():
    rgba = deep(c=4)
    picture = decode(tiff_bytes(rgba, photometric="rgb", extrasamples=("unassalpha",)), name="a.tif")
    assert picture.alpha is not None and np.abs(levels(picture) - rgba).max() == 0
    rgb = deep()
    planar = tiff_bytes(np.ascontiguousarray(rgb.transpose(2, 0, 1)), photometric="rgb", planarconfig="separate")
    assert np.abs(levels(decode(planar, name="p.tif")) - rgb).max() == 0


def test_float_colour_tiff_is_refused_clearly():
    data = tiff_bytes(np.zeros((4, 5, 3), np.float32), photometric="rgb")
    with pytest.raises(ImageError, match="f.tif.*float"):
        decode(data, name="f.tif")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_of_16_bit_pixels_matches_pillow(orientation):
    array = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[274] = orientation
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))))
    assert np.array_equal(_orient(array, orientation), expected)


def test_an_exif_rotated_16_bit_tiff_comes_upright_with_orientation_1():
    array = deep(10, 30)
    data = tiff_bytes(array, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    picture = decode(data, name="rot.tif")
    assert (picture.height, picture.width) == (30, 10)
    assert np.array_equal(levels(picture), np.rot90(array, -1))
    data = encode(picture, "tiff")
    assert Image.open(io.BytesIO(data)).getexif()[274] == 1
    assert np.array_equal(levels(decode(data, name="out.tif")), np.rot90(array, -1))  # written upright


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16_bit_in_gives_16_bit_out_with_alpha(fmt):
    rgba = deep(c=4)
    picture = decode(imagecodecs.png_encode(rgba), name="in.png")
    data = encode(picture, fmt)
    back = decode(data, name=f"out.{fmt}")
    assert back.bit_depth == 16 and back.alpha is not None
    written = imagecodecs.png_decode(data) if fmt == "png" else tifffile.imread(io.BytesIO(data))
    assert written.dtype == np.uint16 and np.any(written % 257)  # not 8 bits scaled up
    assert np.array_equal(written, rgba)


def archival_tiff() -> bytes:
    """A 16-bit RGB TIFF as a scanner writes it: ICC, XMP, 600 dpi, descriptive tags."""
    tags = [(315, "s", 0, "Ann Archivist", True), (33432, "s", 0, "(c) The Archive", True),
            (271, "s", 0, "ScanCo", True), (272, "s", 0, "Model 9", True), (700, "B", len(XMP), XMP, True)]
    return tiff_bytes(deep(), photometric="rgb", iccprofile=ICC, resolution=(600, 600), resolutionunit="INCH",
                      description="Box 12, print 4", datetime="2001:02:03 04:05:06", software="ScanSoft 1",
                      metadata=None, extratags=tags)


def archival_png() -> bytes:
    """An 8-bit PNG with ICC, eXIf (Artist, DateTimeOriginal, orientation 6), XMP, 300 dpi, text."""
    exif = Image.Exif()
    exif[315], exif[274], exif[305] = "Ann Archivist", 6, "ScanSoft 1"
    exif.get_ifd(0x8769)[36867] = "2001:02:03 04:05:06"
    info = PngInfo()
    info.add_text("Title", "Harbour, 1921")
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(
        buffer, "PNG", exif=exif.tobytes(), icc_profile=ICC, dpi=(300, 300), pnginfo=info)
    return buffer.getvalue()


def check_carried(data: bytes, fmt: str, *, dpi: float, exif_sub_ifd: bool) -> dict:
    """The metadata of a written file, checked with Pillow (an independent reader)."""
    image = Image.open(io.BytesIO(data))
    assert image.format.lower() == fmt
    assert image.info.get("icc_profile") == ICC  # byte for byte
    assert image.info["dpi"] == pytest.approx((dpi, dpi), rel=1e-3)
    exif = image.getexif()
    assert exif[315] == "Ann Archivist" and exif.get(274, 1) == 1 and exif[305].startswith("dip ")
    if exif_sub_ifd:
        assert exif.get_ifd(0x8769)[36867] == "2001:02:03 04:05:06"
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp") or bytes(image.tag_v2.get(700, b""))
    assert (xmp.encode() if isinstance(xmp, str) else xmp) == XMP
    return image.info


def test_png_metadata_is_carried_and_the_pixels_upright():
    picture = decode(archival_png(), name="print.png")
    assert (picture.height, picture.width) == (12, 8)  # orientation 6 applied
    for fmt in ("png", "tiff"):
        data = encode(picture, fmt, {"tool": "dip", "task": "denoise"})
        check_carried(data, fmt, dpi=300, exif_sub_ifd=True)
        back = decode(data, name=f"x.{fmt}")
        assert (back.height, back.width) == (12, 8)
        assert read_provenance(back.metadata.text) == {"tool": "dip", "task": "denoise"}
    assert decode(encode(picture, "png"), name="x.png").metadata.text["Title"] == "Harbour, 1921"


def test_tiff_metadata_is_carried_to_tiff_and_png():
    picture = decode(archival_tiff(), name="scan.tif")
    assert picture.metadata.text["Artist"] == "Ann Archivist" and picture.metadata.icc == ICC
    for fmt in ("tiff", "png"):
        data = encode(picture, fmt, {"tool": "dip", "seed": 3})
        check_carried(data, fmt, dpi=600, exif_sub_ifd=False)
        back = decode(data, name=f"x.{fmt}").metadata
        assert back.text["Copyright"] == "(c) The Archive" and back.text["Make"] == "ScanCo"
        assert back.text["DateTime"] == "2001:02:03 04:05:06"
        assert read_provenance(back.text) == {"tool": "dip", "seed": 3}
    description = decode(encode(picture, "tiff", {"tool": "dip"}), name="x.tif").metadata.text["ImageDescription"]
    assert description.startswith("Box 12, print 4\n")  # the archive's description kept, ours appended
    once = decode(encode(picture, "tiff", {"seed": 1}), name="a.tif")
    again = decode(encode(once, "tiff", {"seed": 2}), name="b.tif")
    assert again.metadata.text["ImageDescription"].count("dip:provenance") == 1  # replaced, not stacked
    assert read_provenance(again.metadata.text) == {"seed": 2}


def test_output_names_choose_the_format_or_are_refused():
    assert [output_format(n) for n in ("a.png", "s3://b/c.TIF", "d.tiff")] == ["png", "tiff", "tiff"]
    for bad in ("y.jpg", "noext", "x.webp"):
        with pytest.raises(ValueError, match="cannot write"):
            output_format(bad)
    assert [batch_format("same", f) for f in ("tiff", "png", "jpeg")] == ["tiff", "png", "png"]
    assert batch_format("png", "tiff") == "png"

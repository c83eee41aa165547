import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pipeline.core.encoding import encode_png
from pipeline.core.images import ImageError, Picture, decode, read, to_uint8
from pipeline.core.metadata import read_metadata


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _random_uint8(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR for width x height and no pixel data."""

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize("channels", [1, 2, 3, 4])  # L, LA, RGB, RGBA
def test_8bit_round_trip_is_exact(channels):
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(1, 3 if channels >= 3 else 1, 37, 31, generator=generator)
    alpha = torch.rand(1, 1, 37, 31, generator=generator) if channels in (2, 4) else None
    picture = decode(encode_png(pixels, alpha=alpha), name="x.png")
    assert (picture.channels, picture.height, picture.width, picture.bit_depth) == (
        pixels.shape[1], 37, 31, 8)  # fmt: skip
    assert (picture.pixels - pixels).abs().max() <= 0.5 / 255 + 1e-6
    if alpha is None:
        assert picture.alpha is None
    else:
        assert (picture.alpha - alpha).abs().max() <= 0.5 / 255 + 1e-6


def test_16bit_gray_round_trip_is_exact():
    pixels = torch.rand(1, 1, 19, 23, generator=torch.Generator().manual_seed(2))
    picture = decode(encode_png(pixels, bit_depth=16), name="gray16.png")
    assert picture.bit_depth == 16 and picture.channels == 1
    assert (picture.pixels - pixels).abs().max() <= 0.5 / 65535 + 1e-7
    # and a 16-bit Picture is written back at 16 bits by default
    assert decode(encode_png(picture), name="again.png").pixels.equal(picture.pixels)


@pytest.mark.parametrize("channels, color_type", [(1, 0), (2, 4), (3, 2), (4, 6)])
def test_16bit_png_is_valid_for_every_colour_type(channels, color_type):
    values = torch.rand(1, channels, 9, 13, generator=torch.Generator().manual_seed(3))
    color, alpha = (values[:, :-1], values[:, -1:]) if channels in (2, 4) else (values, None)
    data = encode_png(color, alpha=alpha, bit_depth=16)
    width, height, depth, kind = struct.unpack(">IIBB", data[16:26])  # the IHDR fields
    assert (width, height, depth, kind) == (13, 9, 16, color_type)
    # Pillow reads 16-bit gray exactly but the other colour types at 8 bits (the high byte,
    # gray + alpha as RGBA): check the file's samples against that.
    levels = np.round(values[0].permute(1, 2, 0).double().numpy() * 65535).astype(np.uint16)
    with Image.open(io.BytesIO(data)) as image:
        decoded = np.asarray(image).reshape(9, 13, -1)
    if channels == 1:
        assert np.array_equal(decoded, levels)
    else:
        samples = decoded[:, :, [0, 3]] if channels == 2 else decoded
        assert np.array_equal(samples, levels >> 8)


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-0.5, 0.0, 0.5 / 255 - 1e-4, 0.5, 1.0, 2.0]).view(1, 1, 1, 6)
    assert to_uint8(x).reshape(-1).tolist() == [0, 0, 0, 128, 255, 255]
    assert to_uint8(torch.zeros(1, 3, 5, 7)).shape == (5, 7, 3)


def test_palette_png_with_transparency_gives_rgb_and_alpha():
    image = Image.new("P", (4, 3))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putdata([0, 1] * 6)
    picture = decode(_save(image, "PNG", transparency=1), name="palette.png")
    assert picture.channels == 3 and picture.alpha is not None
    assert picture.alpha[0, 0, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert picture.pixels[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_palette_png_without_transparency_gives_rgb_only():
    image = Image.fromarray(_random_uint8((5, 6, 3))).convert("P")
    picture = decode(_save(image, "PNG"), name="palette.png")
    assert picture.channels == 3 and picture.alpha is None


def test_cmyk_jpeg_gives_rgb():
    image = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # red in CMYK
    picture = decode(_save(image, "JPEG", quality=95), name="cmyk.jpg")
    assert picture.channels == 3 and picture.alpha is None
    red, green, blue = picture.pixels[0, :, 3, 4].tolist()
    assert red > 0.9 and green < 0.1 and blue < 0.1


def test_exif_orientation_6_is_applied():
    array = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 high
    array[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    picture = decode(_save(Image.fromarray(array), "JPEG", exif=exif), name="rotated.jpg")
    assert (picture.height, picture.width) == (40, 20)
    # the stored left half ends up at the top
    assert picture.pixels[0, :, 5, 10].min() > 0.9 and picture.pixels[0, :, 35, 10].max() < 0.1


def test_mode_1_and_16bit_modes_and_i_mode():
    bilevel = Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1")
    assert decode(_save(bilevel, "PNG"), name="b.png").pixels.flatten().tolist() == [0, 1, 0]
    int32_gray = Image.fromarray(np.array([[0, 300, 65535]], np.uint16)).convert("I")
    picture = decode(_save(int32_gray, "TIFF"), name="i.tif")
    assert picture.bit_depth == 16 and picture.pixels.flatten().mul(65535).round().tolist() == [
        0, 300, 65535]  # fmt: skip


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (7, 3)])
def test_tiny_images_decode(size):
    array = _random_uint8((size[1], size[0], 3))
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        picture = decode(_save(Image.fromarray(array), fmt), name=f"tiny.{fmt}")
        assert (picture.width, picture.height) == size


def _truncated(fmt: str) -> bytes:
    data = _save(Image.fromarray(_random_uint8((64, 64, 3))), fmt)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"hello, this is not an image\n" * 10, "not an image"),
        (_truncated("PNG"), "truncated"),
        (_truncated("JPEG"), "truncated"),
        (_png_header_only(0, 5), "not an image"),  # Pillow rejects zero-size headers itself
        (_png_header_only(20_000, 20_000), "decompression bomb"),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg", "zero-size", "bomb"],
)
def test_bad_data_raises_image_error_naming_the_file(data, reason):
    with pytest.raises(ImageError, match=reason) as info:
        decode(data, name="archive/box7/scan_0042.png")
    assert "archive/box7/scan_0042.png" in str(info.value)


def test_max_pixels_is_checked_before_decoding():
    # 9000x9000 header with no pixel data: refused from the header alone
    refusal = r"9000x9000 = 81000000 pixels exceeds max_pixels=64000000"
    with pytest.raises(ImageError, match=refusal):
        decode(_png_header_only(9000, 9000), name="huge.png")
    data = _save(Image.fromarray(_random_uint8((30, 40, 3))), "PNG")
    with pytest.raises(ImageError, match=r"small.png: 40x30 = 1200 pixels exceeds max_pixels=1000"):
        decode(data, name="small.png", max_pixels=1000)
    assert decode(data, name="small.png", max_pixels=None).width == 40


def test_read_names_the_path(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(_truncated("JPEG"))
    with pytest.raises(ImageError, match="broken.jpg"):
        read(path)
    good = tmp_path / "good.png"
    good.write_bytes(_save(Image.fromarray(_random_uint8((5, 4))), "PNG"))
    assert read(good).channels == 1


def test_picture_and_encoder_check_shapes():
    with pytest.raises(ValueError, match=r"\[1, 2, 4, 4\]"):
        Picture(pixels=torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="alpha"):
        Picture(pixels=torch.zeros(1, 3, 4, 4), alpha=torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="bit_depth"):
        encode_png(torch.zeros(1, 3, 4, 4), bit_depth=12)
    with pytest.raises(ValueError, match="NaN"):
        encode_png(torch.full((1, 1, 2, 2), float("nan")))


# -----------------------------------------------------------------------------
# 16-bit gray + alpha TIFF (Pillow cannot identify it), read by tifffile in every layout


def _tiff(*pages, **options) -> bytes:
    """A TIFF (tifffile) of `pages`, each an array or (array, {its own options}); `options` for all."""
    buffer = io.BytesIO()
    byteorder, bigtiff = options.pop("byteorder", "<"), options.pop("bigtiff", False)
    with tifffile.TiffWriter(buffer, byteorder=byteorder, bigtiff=bigtiff) as tif:
        for page in pages:
            array, own = page if isinstance(page, tuple) else (page, {})
            tif.write(array, **{"metadata": None, **options, **own})
    return buffer.getvalue()


def _levels(picture: Picture) -> np.ndarray:
    """HxWxC 16-bit levels of a picture, alpha last."""
    planes = picture.pixels if picture.alpha is None else torch.cat([picture.pixels, picture.alpha], dim=1)
    return np.rint(planes[0].permute(1, 2, 0).double().numpy() * 65535).astype(np.int64)


def _gray_alpha(h=19, w=23, seed=4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (h, w, 2), dtype=np.uint16)


@pytest.mark.parametrize("layout", ["contig", "planar", "big-endian", "bigtiff", "tiled-lzw"])
def test_16_bit_gray_alpha_tiff_decodes_exactly_in_every_layout(layout):
    array = _gray_alpha()
    options = {"photometric": "minisblack", "extrasamples": ("unassalpha",), "planarconfig": "contig"}
    if layout == "planar":
        data = _tiff(np.ascontiguousarray(array.transpose(2, 0, 1)), **{**options, "planarconfig": "separate"})
    else:
        extra = {"big-endian": {"byteorder": ">"}, "bigtiff": {"bigtiff": True},
                 "tiled-lzw": {"tile": (16, 16), "compression": "lzw"}}.get(layout, {})
        data = _tiff(array, **options, **extra)
    picture = decode(data, name="la16.tif")
    assert (picture.bit_depth, picture.channels, picture.metadata.format) == (16, 1, "tiff")
    assert picture.alpha is not None and np.array_equal(_levels(picture), array)


@pytest.mark.parametrize("channels", [2, 4])  # gray + alpha, RGBA
def test_associated_alpha_tiff_gives_straight_colour(channels):
    rng = np.random.default_rng(5)
    straight = rng.integers(0, 65536, (11, 13, channels - 1))
    alpha = rng.integers(0, 65536, (11, 13, 1))
    alpha[0, :3, 0] = [0, 1, 65535]  # transparent, nearly so, opaque
    stored = np.rint(straight * alpha / 65535)  # premultiplied, as the file holds it
    data = _tiff(np.concatenate([stored, alpha], axis=2).astype(np.uint16), planarconfig="contig",
                 photometric="rgb" if channels == 4 else "minisblack", extrasamples=("assocalpha",))
    levels = _levels(decode(data, name="assoc.tif"))
    with np.errstate(divide="ignore", invalid="ignore"):  # alpha 0: the stored colour (0) is kept
        expected = np.where(alpha > 0, np.minimum(np.floor(stored * 65535 / alpha + 0.5), 65535), stored)
    assert np.array_equal(levels[:, :, :-1], expected) and np.array_equal(levels[:, :, -1:], alpha)
    assert np.array_equal(levels[:, :, :-1][alpha[:, :, 0] == 65535], straight[alpha[:, :, 0] == 65535])


def test_16_bit_gray_alpha_tiff_keeps_its_metadata_and_orientation():
    icc, xmp = b"fake-icc" + bytes(range(64)), b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>'
    tags = dict(iccprofile=icc, resolution=(300, 300), resolutionunit="INCH", description="Box 3",
                extratags=[(315, "s", 0, "Ann Archivist", True), (700, "B", len(xmp), xmp, True),
                           (274, "H", 1, 6, True)])
    array = _gray_alpha(10, 30)
    picture = decode(_tiff(array, photometric="minisblack", extrasamples=("unassalpha",), **tags), name="la.tif")
    assert (picture.height, picture.width) == (30, 10)  # orientation 6 applied
    assert np.array_equal(_levels(picture), np.rot90(array, -1))
    metadata = picture.metadata
    assert metadata.icc == icc and metadata.xmp == xmp and metadata.dpi == (300.0, 300.0)
    assert metadata.text["Artist"] == "Ann Archivist" and metadata.text["ImageDescription"] == "Box 3"
    # the same as Pillow's reading gives for a 16-bit RGB file with the same tags
    rgb = _tiff(np.zeros((10, 30, 3), np.uint16), photometric="rgb", **tags)
    assert metadata == read_metadata(Image.open(io.BytesIO(rgb)), rgb)


# -----------------------------------------------------------------------------
# Pages: a multi-page file is refused unless a page is picked; thumbnails are not pages


@pytest.mark.parametrize("kind", ["rgb8", "gray16", "gray-alpha16"])
def test_a_multi_page_tiff_is_refused_unless_a_page_is_picked(kind):
    rng = np.random.default_rng(6)
    shape, dtype, options = {"rgb8": ((3,), np.uint8, {"photometric": "rgb"}),
                             "gray16": ((), np.uint16, {"photometric": "minisblack"}),
                             "gray-alpha16": ((2,), np.uint16, {"photometric": "minisblack",
                                                                "extrasamples": ("unassalpha",),
                                                                "planarconfig": "contig"})}[kind]
    first, second = (rng.integers(0, np.iinfo(dtype).max + 1, (h, w, *shape), dtype=dtype)
                     for h, w in ((9, 12), (7, 5)))
    data = _tiff(first, second, **options)
    with pytest.raises(ImageError, match=r"box/two\.tif: 2 pages: .*--page"):
        decode(data, name="box/two.tif")
    top = np.iinfo(dtype).max
    for page, expected in enumerate((first, second)):
        picture = decode(data, name="box/two.tif", page=page)
        assert picture.bit_depth == (8 if dtype == np.uint8 else 16)
        planes = picture.pixels if picture.alpha is None else torch.cat([picture.pixels, picture.alpha], dim=1)
        levels = np.rint(planes[0].permute(1, 2, 0).double().numpy() * top)
        assert np.array_equal(levels, expected.reshape(*expected.shape[:2], -1))
    with pytest.raises(ImageError, match=r"box/two\.tif: page 2 is out of range: the image has 2 page"):
        decode(data, name="box/two.tif", page=2)


@pytest.mark.parametrize("where", ["after", "before", "subifd"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_tiff_thumbnail_is_not_a_page(where, dtype):
    main = np.random.default_rng(8).integers(0, np.iinfo(dtype).max + 1, (24, 32, 3), dtype=dtype)
    thumb = (np.ascontiguousarray(main[::4, ::4]), {"subfiletype": 1})  # NewSubfileType: reduced resolution
    pages = {"after": [main, thumb], "before": [thumb, main], "subifd": [(main, {"subifds": 1}), thumb]}[where]
    picture = decode(_tiff(*pages, photometric="rgb"), name="scan.tif")
    top = np.iinfo(dtype).max
    assert (picture.height, picture.width) == (24, 32)
    assert np.array_equal(np.rint(picture.pixels[0].permute(1, 2, 0).double().numpy() * top), main)
    with pytest.raises(ImageError, match="page 1 is out of range: the image has 1 page"):
        decode(_tiff(*pages, photometric="rgb"), name="scan.tif", page=1)


@pytest.mark.parametrize("fmt, options", [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})])
def test_an_animation_is_refused_unless_a_frame_is_picked(fmt, options):
    frames = [Image.new("RGB", (6, 4), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **options)
    with pytest.raises(ImageError, match=r"anim: 3 pages: .*--page"):
        decode(data, name="anim")
    assert decode(data, name="anim", page=1).pixels[0, :, 0, 0].tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(ImageError, match="page 3 is out of range"):
        decode(data, name="anim", page=3)


def _mpo(second_type: int) -> bytes:
    """A JPEG with a second, half-size picture in its MP index, of MP type `second_type`."""
    big = Image.fromarray(_random_uint8((20, 30, 3), seed=9))
    data = _save(big, "MPO", save_all=True, append_images=[big.resize((15, 10))])
    header = data.index(b"MPF\x00") + 4  # the MP index, a little-endian TIFF structure
    tag = data.index(b"\x02\xb0\x07\x00", header)  # MPEntry: code, type, count, offset
    (offset,) = struct.unpack("<L", data[tag + 8:tag + 12])
    at = header + offset + 16  # the second entry's attribute
    return data[:at] + struct.pack("<L", second_type) + data[at + 4:]


def test_a_camera_jpeg_with_a_preview_is_one_page_and_a_stereo_pair_two():
    assert decode(_mpo(0x010001), name="camera.jpg").width == 30  # a "Large Thumbnail" is not a page
    with pytest.raises(ImageError, match="stereo.mpo: 2 pages"):
        decode(_mpo(0x020002), name="stereo.mpo")  # a disparity (stereo) pair is two pictures
    assert decode(_mpo(0x020002), name="stereo.mpo", page=1).width == 15


def test_page_of_a_single_page_image():
    data = _save(Image.fromarray(_random_uint8((5, 4, 3))), "PNG")
    assert decode(data, name="one.png", page=0).width == 4
    with pytest.raises(ImageError, match=r"one.png: page 1 is out of range: the image has 1 page"):
        decode(data, name="one.png", page=1)
    for bad in (-1, 1.0, True):
        with pytest.raises(ImageError, match="one.png: page must be an int >= 0"):
            decode(data, name="one.png", page=bad)

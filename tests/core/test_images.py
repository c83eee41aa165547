import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.encoding import encode_png
from pipeline.core.images import ImageError, Picture, decode, read, to_uint8


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

"""What ``dip`` reads and writes: the file suffixes a listing treats as images, the pixel limit, and
the output format a file name asks for.

No torch or Pillow import, so that the ``dip`` command's help and ``dip manifest`` can use them.
"""

DEFAULT_MAX_PIXELS = 64_000_000  # width * height; larger images are refused from their header
BYTES_PER_PIXEL = 8  # the most an uncompressed input takes per pixel: 16-bit RGBA (or RGB + infrared)
HEADER_ALLOWANCE = 64 * 2**20  # metadata beside the pixels: ICC profiles, XMP, thumbnails


def max_input_bytes(max_pixels: int | None) -> int | None:
    """The most bytes an input of at most ``max_pixels`` pixels may have: its pixels uncompressed at
    ``BYTES_PER_PIXEL`` and ``HEADER_ALLOWANCE`` (None: no limit). A larger file is refused unread."""
    return None if max_pixels is None else max_pixels * BYTES_PER_PIXEL + HEADER_ALLOWANCE
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")  # what a listing treats as images

OUTPUT_FORMATS = {".png": "png", ".tif": "tiff", ".tiff": "tiff"}  # suffix -> format written
SUFFIX = {"png": ".png", "tiff": ".tif"}  # format -> the suffix of the batch job's restored files


def output_format(name: str) -> str:
    """The format ("png" or "tiff") a file name asks for; ValueError naming the file otherwise
    (checked before any fit, so a fit is never lost to an unwritable name)."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    suffix = "." + base.rsplit(".", 1)[-1].lower() if "." in base else ""
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"cannot write {name!r}: the restored image is written as PNG or TIFF (16-bit and alpha "
                         f"kept); name it .png, .tif or .tiff, not {suffix or 'without a suffix'}")
    return OUTPUT_FORMATS[suffix]


def batch_format(requested: str, input_format: str | None) -> str:
    """The format of a batch's restored file: ``requested`` (png, tiff), or for ``same`` TIFF when
    the input was a TIFF and PNG otherwise."""
    if requested == "same":
        return "tiff" if input_format == "tiff" else "png"
    if requested not in SUFFIX:
        raise ValueError(f"unknown output format {requested!r}; expected png, tiff or same")
    return requested

"""What ``dip`` reads: the file suffixes a listing treats as images, and the pixel limit.

No torch or Pillow import, so that the ``dip`` command's help and ``dip manifest`` can use them.
"""

DEFAULT_MAX_PIXELS = 64_000_000  # width * height; larger images are refused from their header
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")  # what a listing treats as images

"""Tile geometry for images too large for the device: where the tiles go, how they blend.

``tile_boxes`` cuts an image into evenly spread tiles that overlap their neighbours;
``blend_weights`` gives each tile a raised-cosine ramp across the overlap, so that the weights
normalised by their sum make every pixel a convex combination of the tiles covering it (no
seams); ``largest_tile`` finds the largest tile side that fits a memory budget. Pure functions:
``pipeline.core.restore.restore_tiled`` fits the tiles and blends them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

TILE_OVERLAP_DIVISOR = 8  # tiles overlap by 1/8 of their side

Box = tuple[int, int, int, int]  # (top, left, height, width), in px


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[Box]:
    """Boxes (top, left, h, w) covering a height x width image, row by row.

    Each box is at most tile x tile; neighbours overlap by at least ``overlap`` px; the boxes are
    spread evenly and the last one in a row or column is flush with the border. An image not
    larger than the tile is one box.
    """
    for name, value in (("height", height), ("width", width), ("tile", tile)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"tile_boxes: {name} must be a positive int, got {value!r}")
    if not isinstance(overlap, int) or not tile > overlap >= 0:
        raise ValueError(f"tile_boxes: need tile > overlap >= 0, got tile={tile!r} overlap={overlap!r}")
    rows, cols = _spans(height, tile, overlap), _spans(width, tile, overlap)
    return [(top, left, h, w) for top, h in rows for left, w in cols]


def _spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, length) along one axis: n tiles of `tile` px with starts rounded from an even spacing."""
    if size <= tile:
        return [(0, size)]
    n = math.ceil((size - overlap) / (tile - overlap))  # spacing (size - tile) / (n - 1) <= tile - overlap
    return [((i * (size - tile) + (n - 1) // 2) // (n - 1), tile) for i in range(n)]


def blend_weights(box: Box, height: int, width: int, overlap: int) -> Tensor:
    """Weights [1, 1, h, w] for the tile at ``box`` in a height x width image, in (0, 1].

    On a side that borders another tile they rise as a raised cosine across ``overlap`` px from
    near 0 at the tile's edge to 1; on a side at the image border they are 1. Never 0, so the sum
    of the weights over the tiles can divide.
    """
    top, left, h, w = box
    if not (0 <= top and top + h <= height and 0 <= left and left + w <= width and h >= 1 and w >= 1):
        raise ValueError(f"blend_weights: box {box} is not inside a {height}x{width} image")
    if not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"blend_weights: overlap must be an int >= 0, got {overlap!r}")
    rows = _ramp(h, overlap, top > 0, top + h < height)  # (h,)
    cols = _ramp(w, overlap, left > 0, left + w < width)  # (w,)
    return (rows[:, None] * cols[None, :])[None, None]  # (1, 1, h, w)


def _ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> Tensor:
    """(length,) weights: 1, and sin²(π (d + ½) / 2·overlap) within overlap px of a ramped end
    (d px from it). Two tiles overlapping by exactly overlap px get weights summing to 1."""
    weights = torch.ones(length, dtype=torch.float64)
    d = torch.arange(length, dtype=torch.float64)  # distance from the start
    for ramped, distance in ((ramp_start, d), (ramp_end, length - 1 - d)):
        if ramped and overlap > 0:
            rise = torch.sin(math.pi * (distance + 0.5) / (2 * overlap)).square()
            weights = torch.minimum(weights, torch.where(distance < overlap, rise, 1.0))
    return weights.float()


def balanced_tile(height: int, width: int, tile: int, lo: int = 1) -> int:
    """The smallest tile side in [lo, tile] that cuts a height x width image into no more tiles than
    ``tile`` does (overlap 1/``TILE_OVERLAP_DIVISOR`` of the side): as many fits, each smaller. Two
    tiles of 2,864 px cover a 4,000 px side with 1,728 px of overlap; two of 2,130 px cover it too."""
    def count(side: int) -> int:
        return len(tile_boxes(height, width, side, max(1, side // TILE_OVERLAP_DIVISOR)))

    most = count(tile)
    while lo < tile:  # count is non-increasing in the side: the first side at most `most`
        mid = (lo + tile) // 2
        lo, tile = (lo, mid) if count(mid) <= most else (mid + 1, tile)
    return tile


def largest_tile(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest side s in [lo, hi] with fits(s), by binary search (fits must be monotone:
    true up to some side, false above). ValueError when not even lo fits."""
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise ValueError(f"largest_tile: need 1 <= lo <= hi, got lo={lo!r} hi={hi!r}")
    if not fits(lo):
        raise ValueError(f"largest_tile: not even a {lo} px tile fits")
    while lo < hi:  # fits(lo) holds
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo

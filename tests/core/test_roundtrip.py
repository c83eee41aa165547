"""dip reads back everything it writes: every mode the encoder writes (PNG and TIFF; 8 and 16 bits;
L, LA, RGB, RGBA) decodes to the same levels, alpha and bit depth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.encoding import encode
from pipeline.core.images import Picture, decode

MODES = {"L": (1, False), "LA": (1, True), "RGB": (3, False), "RGBA": (3, True)}  # colour channels, alpha


def levels_of(planes: torch.Tensor, top: int) -> np.ndarray:
    """[1, C, H, W] values k/top -> [C, H, W] integer levels k."""
    return np.rint(planes[0].double().numpy() * top).astype(np.int64)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_dip_reads_back_everything_it_writes(fmt, bit_depth, mode):
    channels, has_alpha = MODES[mode]
    top = 2**bit_depth - 1
    levels = np.random.default_rng(7).integers(0, top + 1, (channels + has_alpha, 37, 31))
    levels[:, 0, :2] = [[0, top]] * len(levels)  # both ends of the range, alpha 0 and 1 included
    planes = torch.from_numpy(levels.astype(np.float64) / top).float()[None]  # (1, C + A, H, W)
    picture = Picture(pixels=planes[:, :channels], alpha=planes[:, channels:] if has_alpha else None,
                      bit_depth=bit_depth)
    back = decode(encode(picture, fmt), name=f"{mode}{bit_depth}.{fmt}")
    assert (back.bit_depth, back.channels, back.height, back.width) == (bit_depth, channels, 37, 31)
    assert np.array_equal(levels_of(back.pixels, top), levels[:channels])
    assert (back.alpha is not None) == has_alpha
    if has_alpha:
        assert np.array_equal(levels_of(back.alpha, top), levels[channels:])

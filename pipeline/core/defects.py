"""Dust and scratches found without learning: a mask in the ``--mask`` convention (white = pixel
kept, black = defect to fill), for ``--task archive``.

Both kinds are small bright or dark structures that stand out from their surroundings by more
than the noise and the local texture explain, found on the luminance with scikit-image's
morphology, labelling and Hough transform:

1. Contrast: the white and black top-hats (what an opening or closing by a disc removes: bright or
   dark structures narrower than the disc; step edges give nothing), each scored against its local
   level and spread (the median and median absolute deviation over 16x16 blocks, floored at half
   the image's noise level σ̂) and required to change the pixel by ``MIN_CONTRAST`` or more.
2. Specks: hysteresis-thresholded top-hat (disc of radius 4: up to about 7 px across), kept where
   a component is small (``SPECK_AREA``), round and solid, stands out from the ring around it by
   ``RING_CONTRAST`` times that ring's spread (a detail of busy texture does not), and is not
   one of a tight group (``CROWD``: the letters of a word, the highlights of a texture).
3. Scratches: the Hough transform of the thin top-hat (disc of radius 2: lines up to 4 px wide)
   finds long straight lines at any angle; along each, the runs where the line is visible
   (``SCRATCH_LENGTH`` or longer) are kept when the background is the same on both sides (a
   scratch crosses the content; an object's edge has a different side each way), with the width
   measured from the line's profile.
4. A ring of one pixel around what was found, where it still stands out, joins the mask (the
   defect's anti-aliased edge).

``sensitivity`` divides the seed threshold and the contrast needed (2: half the contrast is
enough; 0.5: twice as much is needed). What this does not find: defects wider than 7 px that are
not straight lines (hairs, fibres, stains), and faint defects on busy texture; it takes straight
thin natural lines (mortar joints, wires, text baselines) for scratches when they are long and even.
``benchmarks/archive.py`` measures precision and recall on the ``archive-synthetic`` suite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SPECK_RADIUS = 4  # the opening's disc for specks: structures up to 2r - 1 = 7 px across
LINE_RADIUS = 2  # the opening's disc for scratches: lines up to 4 px wide
BLOCK = 16  # px: the blocks over which the local level and spread of the top-hat are taken
HIGH, LOW = 9.0, 3.0  # hysteresis thresholds, in local spreads (HIGH divided by the sensitivity)
MIN_CONTRAST = 0.15  # a defect changes the luminance by at least this much ([0, 1] units) at HIGH
SPECK_AREA = 60  # px: the largest speck (a 7 px disc with its edge)
SPECK_ECCENTRICITY = 0.95
SPECK_SOLIDITY = 0.75  # area / convex hull area: dust is a blob
RING_CONTRAST = 5.0  # a speck's contrast against the spread of the ring 2-3 px around it
CROWD, CROWD_RADIUS = 2, 12  # a speck with CROWD other candidates within CROWD_RADIUS px is not dust
SCRATCH_LENGTH = 0.45  # a scratch's shortest visible run, as a share of the image's shorter side
SCRATCH_MIN_PX = 32  # ... and in px, for small images
SCRATCH_DENSITY = 0.5  # share of a run's positions (21 px window) where the line stands out
SYMMETRY = 0.5  # |left - right| of a scratch's background at most this share of its contrast
MAX_SCRATCHES = 12  # Hough peaks examined per polarity


@dataclass(frozen=True)
class Defects:
    """What ``detect_defects`` found: ``keep`` (H, W) bool, True = pixel kept, and counts."""

    keep: np.ndarray
    specks: int
    scratches: int

    @property
    def fraction(self) -> float:
        """The share of pixels masked (0 = none)."""
        return float(1.0 - self.keep.mean())


def detect_defects(pixels, *, sensitivity: float = 1.0) -> Defects:
    """Dust specks and scratches in ``pixels`` [1, C, H, W] in [0, 1] (a torch tensor or numpy array).

    sensitivity: > 0, scales the thresholds (higher finds fainter defects and more false ones).
    """
    from skimage.filters import apply_hysteresis_threshold
    from skimage.measure import label
    from skimage.morphology import dilation, disk
    from skimage.restoration import estimate_sigma

    number = isinstance(sensitivity, int | float) and not isinstance(sensitivity, bool)
    if not (number and math.isfinite(sensitivity) and sensitivity > 0):
        raise ValueError(f"defect sensitivity must be a positive number, got {sensitivity!r}")
    array = np.asarray(pixels, dtype=np.float64)
    if array.ndim != 4 or array.shape[0] != 1 or min(array.shape[2:]) < 8:
        raise ValueError(f"detect_defects needs pixels [1, C, H, W] with H, W >= 8, got {list(array.shape)}")
    luma = array[0].mean(axis=0)  # (H, W): dust and scratches are grey, they change every channel
    sigma = float(estimate_sigma(luma))  # the luminance's own noise level (channels may be correlated)
    high = HIGH / sensitivity
    low = min(LOW, 0.75 * high)  # growth stays above the noise at any sensitivity
    min_length = max(SCRATCH_MIN_PX, int(SCRATCH_LENGTH * min(luma.shape)))
    found = np.zeros(luma.shape, dtype=bool)
    specks = scratches = 0
    speck_scores = _tophat_scores(luma, SPECK_RADIUS, sigma, high)
    line_scores = _tophat_scores(luma, LINE_RADIUS, sigma, high)
    for z, z_line in zip(speck_scores, line_scores, strict=True):  # bright defects, then dark ones
        labels, count = label(apply_hysteresis_threshold(z, low, high), connectivity=2, return_num=True)
        kept = _specks(labels, count, luma)
        lines, n_lines = _scratches(z_line, luma, low, min_length)
        part = kept[labels] | lines
        part |= dilation(part, disk(1)) & (z > low / 2)
        found |= part
        specks += int(kept.sum())
        scratches += n_lines
    return Defects(keep=~found, specks=specks, scratches=scratches)


def _tophat_scores(luma: np.ndarray, radius: int, sigma: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """The white and black top-hats of ``luma`` by a disc of ``radius`` (reflect-padded), each in
    local spreads: (top-hat - block median) / max(1.4826 * block MAD, sigma / 2), capped where the
    top-hat is below ``MIN_CONTRAST * value / high`` (so that ``high`` needs ``MIN_CONTRAST``)."""
    from skimage.morphology import black_tophat, disk, white_tophat

    footprint, pad = disk(radius), radius + 1
    padded = np.pad(luma, pad, mode="reflect")
    inner = (slice(pad, -pad), slice(pad, -pad))
    scores = []
    for tophat in (white_tophat(padded, footprint)[inner], black_tophat(padded, footprint)[inner]):
        centre = _block_stat(tophat)
        spread = np.maximum(1.4826 * _block_stat(np.abs(tophat - centre)), 0.5 * sigma)
        excess = tophat - centre
        scores.append(np.minimum(excess / spread, excess * high / MIN_CONTRAST))
    return scores[0], scores[1]


def _block_stat(values: np.ndarray) -> np.ndarray:
    """The median of ``values`` over BLOCK x BLOCK blocks (smaller on small images), interpolated
    back to full size."""
    from skimage.transform import resize

    h, w = values.shape
    block = max(4, min(BLOCK, min(h, w) // 2))  # small images: at least two blocks a side
    hb, wb = h // block, w // block
    blocks = values[:hb * block, :wb * block].reshape(hb, block, wb, block).transpose(0, 2, 1, 3)
    medians = np.median(blocks.reshape(hb, wb, -1), axis=-1)
    return resize(medians, (h, w), order=1, mode="edge")


def _specks(labels: np.ndarray, count: int, luma: np.ndarray) -> np.ndarray:
    """keep[label] for labels 0..count: True for the components that are specks (small, round,
    standing out from their ring); keep[0] (the background) False."""
    from skimage.measure import regionprops
    from skimage.morphology import dilation, disk

    keep = np.zeros(count + 1, dtype=bool)
    h, w = labels.shape
    regions = regionprops(labels)
    everything = np.array([region.centroid for region in regions]).reshape(-1, 2)  # every candidate's centre
    for region in regions:
        if region.area > SPECK_AREA or (region.area >= 6 and region.eccentricity > SPECK_ECCENTRICITY):
            continue
        if region.area >= 10 and region.solidity < SPECK_SOLIDITY:  # a letter's stroke, not a blob
            continue
        top, left, bottom, right = region.bbox
        top, left, bottom, right = max(top - 4, 0), max(left - 4, 0), min(bottom + 4, h), min(right + 4, w)
        inside = labels[top:bottom, left:right] == region.label
        ring = dilation(inside, disk(3)) & ~dilation(inside, disk(1))
        patch = luma[top:bottom, left:right]
        around = patch[ring]
        if around.size == 0:
            continue
        spread = 1.4826 * np.median(np.abs(around - np.median(around))) + 1e-6
        if abs(np.median(patch[inside]) - np.median(around)) < RING_CONTRAST * spread:
            continue
        # dust is scattered: one of a tight group of candidates is texture or text
        distances = np.sqrt(((everything - np.asarray(region.centroid)) ** 2).sum(axis=1))
        keep[region.label] = (distances <= CROWD_RADIUS).sum() - 1 < CROWD
    return keep


def _scratches(z: np.ndarray, luma: np.ndarray, low: float, min_length: int) -> tuple[np.ndarray, int]:
    """Long straight lines where the thin top-hat score ``z`` stands out: (mask, count)."""
    from skimage.transform import hough_line, hough_line_peaks

    h, w = z.shape
    found = np.zeros((h, w), dtype=bool)
    candidates = z > LOW * 2 / 3
    if not candidates.any():
        return found, 0
    thetas = np.linspace(-np.pi / 2, np.pi / 2, 360, endpoint=False)
    accumulator, angles, distances = hough_line(candidates, theta=thetas)
    _, peak_angles, peak_distances = hough_line_peaks(
        accumulator, angles, distances, min_distance=7, min_angle=7, threshold=0.6 * min_length,
        num_peaks=MAX_SCRATCHES)
    rows, cols = np.mgrid[0:h, 0:w]
    strong, count = z > low, 0
    for angle, distance in zip(peak_angles, peak_distances, strict=True):
        line = _scratch_along(rows, cols, z, luma, strong, angle, distance, min_length)
        if line is not None:
            found |= line
            count += 1
    return found, count


def _scratch_along(rows, cols, z, luma, strong, angle, distance, min_length) -> np.ndarray | None:
    """The scratch on the Hough line (angle, distance), or None: its visible runs of ``min_length``
    px or more, as wide as its profile, if its background matches on both sides."""
    c, s = math.cos(angle), math.sin(angle)
    offset = cols * c + rows * s - distance  # signed distance from the line, px
    band = np.abs(offset) <= 2.5
    position = np.round(rows * c - cols * s).astype(int)  # along the line, px
    at, hit = position[band], strong[band]
    first, n = at.min(), at.max() - at.min() + 1
    cover = np.zeros(n)
    np.maximum.at(cover, at - first, hit.astype(float))
    density = np.convolve(cover, np.ones(21) / 21, mode="same")
    visible = _long_runs(density >= SCRATCH_DENSITY, min_length)
    if not visible.any():
        return None
    on_run, across, scores = visible[at - first], offset[band], z[band]
    half = 0.5  # half-width: grow while the profile's ring still stands out
    for step in np.arange(1.0, 2.6, 0.5):
        ring = on_run & (np.abs(across) <= step) & (np.abs(across) > step - 0.5)
        if not ring.any() or np.median(scores[ring]) <= 1.0:
            break
        half = step
    near = np.abs(offset) <= half + 6  # the line and 1.5-6 px of background on each side
    along = position[near] - first
    inside = (along >= 0) & (along < n)
    inside[inside] = visible[along[inside]]
    values, side = luma[near], offset[near]
    left = values[inside & (side < -half - 1.5)]
    right = values[inside & (side > half + 1.5)]
    centre = values[inside & (np.abs(side) <= half)]
    if min(left.size, right.size) < centre.size:  # a side cut off by the border: nothing to compare
        return None
    left_m, right_m = np.median(left), np.median(right)
    if abs(left_m - right_m) > SYMMETRY * abs(np.median(centre) - (left_m + right_m) / 2):
        return None  # one side differs from the other: an object's edge, not a scratch
    line = np.zeros(z.shape, dtype=bool)
    line[band] = on_run & ((np.abs(across) <= half) | hit)
    return line


def _long_runs(flags: np.ndarray, min_length: int) -> np.ndarray:
    """``flags`` with only its runs of True of ``min_length`` or more left."""
    padded = np.concatenate(([False], flags, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    out = np.zeros_like(flags, dtype=bool)
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        if stop - start >= min_length:
            out[start:stop] = True
    return out

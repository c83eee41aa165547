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
   more than ``RING_NOISE`` times the noise of that difference (σ̂ and the pixels counted) and
   ``RING_TEXTURE`` times the ring's texture (its spread beyond σ̂: a detail of busy texture does
   not), and is not one of a tight group (``CROWD``: the letters of a word, the highlights of a
   texture).
3. Scratches: the Hough transform of the thin top-hat (disc of radius 2: lines up to 4 px wide)
   finds long straight lines at any angle, each refitted to the strong pixels near it (the
   transform's half-degree bins put a long line's ends px off); along each, the line's evidence (its top-hat score,
   averaged over ``SCRATCH_WINDOW`` px along it: a faint scratch adds up along its length) marks
   where it is visible; runs of ``SCRATCH_LENGTH`` or longer are kept when the background is the
   same on both sides (a scratch crosses the content; an object's edge has a different side each
   way), with the width measured from the line's profile. ``FAMILY`` or more lines at one angle
   (mortar joints, planks, blinds) are the picture's structure, not scratches.
4. Colour: dust and scratches are grey, so one laid over a coloured background takes the
   background's colour away, and one over a grey background stays grey. A candidate, bright or
   dark, whose change keeps its background's colour (``CHROMA_GAIN``: a highlight, a coloured
   shadow) or has a colour of its own (``COLOUR_SHIFT``: a blue shadow on white snow) is the
   picture's. Lines are tested when bright, on the first part only: a long line crosses many
   backgrounds, and the medians over them are not one background's. Coloured defects (an emulsion
   scratch through one dye layer) are missed for this test.
5. A ring of one pixel around what was found, where it still stands out, joins the mask (the
   defect's anti-aliased edge).

``sensitivity`` divides the seed threshold, the contrast needed, the scratches' evidence and the
chroma gain (2: half the contrast is enough, and a grey defect of 15% opacity on a coloured background
is dust; 0.5: twice as much is needed). What this does not find: defects wider
than 7 px that are not straight lines (hairs, fibres, stains), faint specks on busy texture or under
heavy grain (a speck of one or two pixels needs several times the grain's contrast); it takes
straight thin natural lines (grooves, wires, a panel's edge) for scratches when they are long, even
and not one of a family, and dark details of the picture (a letter, a knot) for dust where they
stand alone. ``python -m benchmarks.archive`` measures precision and recall on the ``archive-synthetic`` suite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SPECK_RADIUS = 4  # the opening's disc for specks: structures up to 2r - 1 = 7 px across
LINE_RADIUS = 2  # the opening's disc for scratches: lines up to 4 px wide
BLOCK = 16  # px: the blocks over which the local level and spread of the top-hat are taken
HIGH, LOW = 5.0, 3.0  # hysteresis thresholds, in local spreads (HIGH divided by the sensitivity)
MIN_CONTRAST = 0.15  # a defect changes the luminance by at least this much ([0, 1] units) at HIGH
SPECK_AREA = 60  # px: the largest speck (a 7 px disc with its edge)
SPECK_ECCENTRICITY = 0.95
SPECK_SOLIDITY = 0.75  # area / convex hull area: dust is a blob
RING_NOISE = 5.0  # a speck's contrast against the ring 2-3 px around it, in the noise of that difference
RING_TEXTURE = 5.0  # ... and in the ring's texture (its spread beyond the noise)
CROWD, CROWD_RADIUS = 2, 12  # a speck with CROWD other candidates within CROWD_RADIUS px is not dust
SCRATCH_LENGTH = 0.45  # a scratch's shortest visible run, as a share of the image's shorter side
SCRATCH_MIN_PX = 32  # ... and in px, for small images
SCRATCH_EVIDENCE = 1.3  # mean top-hat score (local spreads) along a visible run, over ...
SCRATCH_WINDOW = 41  # ... this many positions along the line
SCRATCH_INNER, SCRATCH_CAP = 1.5, 8.0  # px from the line where its evidence is taken; score cap
SCRATCH_EDGE = 0.5  # a scratch's profile grows while its ring's median score is above this (local spreads)
REFINE_BANDS = (3.5, 2.5)  # px: the Hough line is refitted to the strong pixels this near it, twice
REFINE_TURN = 2.0  # degrees: a refit that turns the line further than this is not the same line
FAMILY, FAMILY_ANGLE = 3, 1.5  # this many lines within this many degrees of each other are structure
SYMMETRY = 0.5  # |left - right| of a scratch's background at most this share of its contrast
CHROMA_MIN = 0.04  # a background's chroma (RMS over channels x sqrt(C)) the colour test needs
CHROMA_GAIN = -0.3  # a candidate whose change keeps more of its background's chroma is the picture's
COLOUR_SHIFT = 0.15  # ... and one whose change has a colour of its own (RMS over channels, share of the change)
COLOUR_NOISE = 2.0  # ... beyond this many times the noise of a channel's difference of medians
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
    gain = CHROMA_GAIN / sensitivity  # a fainter grey defect (lower opacity) keeps more of the background's chroma
    low = min(LOW, 0.75 * high)  # growth stays above the noise at any sensitivity
    min_length = max(SCRATCH_MIN_PX, int(SCRATCH_LENGTH * min(luma.shape)))
    found = np.zeros(luma.shape, dtype=bool)
    specks = scratches = 0
    speck_scores = _tophat_scores(luma, SPECK_RADIUS, sigma)
    line_scores = _tophat_scores(luma, LINE_RADIUS, sigma)
    colour = array[0] if array.shape[1] >= 3 else None  # (C, H, W): the chroma test
    for bright, z, z_line in zip((True, False), speck_scores, line_scores, strict=True):  # bright, then dark
        labels, count = label(apply_hysteresis_threshold(z, low, high), connectivity=2, return_num=True)
        kept = _specks(labels, count, luma, sigma, colour, gain)
        lines, n_lines = _scratches(z_line, luma, low, min_length, colour if bright else None, gain,
                                    evidence=SCRATCH_EVIDENCE / sensitivity)
        part = kept[labels] | lines
        part |= dilation(part, disk(1)) & (z > low / 2)
        found |= part
        specks += int(kept.sum())
        scratches += n_lines
    return Defects(keep=~found, specks=specks, scratches=scratches)


def _tophat_scores(luma: np.ndarray, radius: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The white and black top-hats of ``luma`` by a disc of ``radius`` (reflect-padded), each in
    local spreads: (top-hat - block median) / max(1.4826 * block MAD, sigma / 2), capped where the
    top-hat is below ``MIN_CONTRAST * value / HIGH`` (so that ``HIGH`` needs ``MIN_CONTRAST``)."""
    from skimage.morphology import black_tophat, disk, white_tophat

    footprint, pad = disk(radius), radius + 1
    padded = np.pad(luma, pad, mode="reflect")
    inner = (slice(pad, -pad), slice(pad, -pad))
    scores = []
    for tophat in (white_tophat(padded, footprint)[inner], black_tophat(padded, footprint)[inner]):
        centre = _block_stat(tophat)
        spread = np.maximum(1.4826 * _block_stat(np.abs(tophat - centre)), 0.5 * sigma)
        excess = tophat - centre
        scores.append(np.minimum(excess / spread, excess * HIGH / MIN_CONTRAST))
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


def _specks(labels: np.ndarray, count: int, luma: np.ndarray, sigma: float,
            colour: np.ndarray | None, gain: float) -> np.ndarray:
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
        # Its contrast against the ring must exceed what the noise gives two medians of that many
        # pixels, and the ring's texture (its spread beyond the noise).
        spread = 1.4826 * np.median(np.abs(around - np.median(around)))
        texture = math.sqrt(max(spread ** 2 - sigma ** 2, 0.0))
        noise = 1.2533 * sigma * math.sqrt(1 / inside.sum() + 1 / around.size)  # std of the medians' difference
        if abs(np.median(patch[inside]) - np.median(around)) < max(RING_NOISE * noise, RING_TEXTURE * texture, 1e-6):
            continue
        if colour is not None and _keeps_colour(colour[:, top:bottom, left:right], inside, ring, gain,
                                                math.sqrt(colour.shape[0]) * noise):
            continue
        keep[region.label] = True
    # dust is scattered: one of a tight group of candidates is texture or text
    for region in regions:
        if keep[region.label]:
            distances = np.sqrt(((everything - np.asarray(region.centroid)) ** 2).sum(axis=1))
            keep[region.label] = (distances <= CROWD_RADIUS).sum() - 1 < CROWD
    return keep


def _scratches(z: np.ndarray, luma: np.ndarray, low: float, min_length: int, colour: np.ndarray | None,
               gain: float, evidence: float) -> tuple[np.ndarray, int]:
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
    strong = z > low
    lines = []
    for peak in zip(peak_angles, peak_distances, strict=True):
        angle, distance = _refined(rows, cols, z, strong, *peak)
        found_line = _scratch_along(rows, cols, z, luma, strong, angle, distance, min_length, colour, gain, evidence)
        if found_line is not None:
            lines.append((angle, *found_line))
    # A family of parallel lines (mortar joints, planks, blinds, ruled paper) is the picture's own
    # structure: scratches cross an image at angles of their own. Lines of the picture's colour
    # count in the family too.
    angles = np.array([angle for angle, _, _ in lines])
    count = 0
    for angle, line, pictures in lines:
        apart = np.abs((angles - angle + np.pi / 2) % np.pi - np.pi / 2)  # angle differences, mod 180 deg
        if not pictures and (apart <= math.radians(FAMILY_ANGLE)).sum() < FAMILY:
            found |= line
            count += 1
    return found, count


def _refined(rows, cols, z, strong, angle: float, distance: float) -> tuple[float, float]:
    """The Hough line (angle, distance) refitted to the strong pixels near it (their principal axis,
    weighted by their capped score): the transform's half-degree bins put a long scratch's ends
    px off the line, masking background on one side and leaving the scratch's edge on the other."""
    for width in REFINE_BANDS:
        c, s = math.cos(angle), math.sin(angle)
        near = strong & (np.abs(cols * c + rows * s - distance) <= width)
        if near.sum() < 20:
            break
        x, y, weight = cols[near], rows[near], np.minimum(z[near], SCRATCH_CAP)
        mx, my = np.average(x, weights=weight), np.average(y, weights=weight)
        _, axes = np.linalg.eigh(np.cov(np.stack([x - mx, y - my]), aweights=weight))
        normal = (math.atan2(axes[1, 0], axes[0, 0]) + math.pi / 2) % math.pi - math.pi / 2  # Hough's range
        if abs((normal - angle + math.pi / 2) % math.pi - math.pi / 2) > math.radians(REFINE_TURN):
            break
        angle, distance = normal, mx * math.cos(normal) + my * math.sin(normal)
    return angle, distance


def _scratch_along(rows, cols, z, luma, strong, angle, distance, min_length, colour, gain,
                   needed) -> tuple[np.ndarray, bool] | None:
    """The line on the Hough line (angle, distance), or None: its visible runs of ``min_length``
    px or more, as wide as its profile, if its background matches on both sides; and whether it
    keeps its background's colour (a line of the picture, not a scratch).

    Visible: the line's evidence at each position along it (the largest top-hat score within
    ``SCRATCH_INNER`` px of the line, capped at ``SCRATCH_CAP`` so that one speck on the line does
    not carry it) averaged over ``SCRATCH_WINDOW`` positions reaches ``needed`` (``SCRATCH_EVIDENCE``
    over the sensitivity): a faint scratch, a few local spreads above the grain pixel by pixel, adds
    up along its length. A colour image ``colour`` (C, H, W) is tested as ``_keeps_colour`` says."""
    c, s = math.cos(angle), math.sin(angle)
    offset = cols * c + rows * s - distance  # signed distance from the line, px
    band = np.abs(offset) <= 2.5
    position = np.round(rows * c - cols * s).astype(int)  # along the line, px
    at, hit, across, scores = position[band], strong[band], offset[band], z[band]
    first, n = at.min(), at.max() - at.min() + 1
    inner = np.abs(across) <= SCRATCH_INNER
    evidence = np.full(n, -np.inf)
    np.maximum.at(evidence, at[inner] - first, np.clip(scores[inner], -SCRATCH_CAP, SCRATCH_CAP))
    present = np.isfinite(evidence)
    window = np.ones(SCRATCH_WINDOW)
    total = np.convolve(np.where(present, evidence, 0.0), window, mode="same")
    counted = np.convolve(present.astype(float), window, mode="same")
    visible = _long_runs(present & (total >= needed * np.maximum(counted, 1)), min_length)
    visible = _trimmed(visible, np.convolve(np.where(present, evidence, 0.0), np.ones(5) / 5, mode="same"), needed)
    if not visible.any():
        return None
    on_run = visible[at - first]
    half = 0.5  # half-width: grow while the profile's ring still stands out
    for step in np.arange(1.0, 2.6, 0.5):
        ring = on_run & (np.abs(across) <= step) & (np.abs(across) > step - 0.5)
        if not ring.any() or np.median(scores[ring]) <= SCRATCH_EDGE:
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
    pictures = False
    if colour is not None:
        sides = np.zeros(z.shape, dtype=bool)
        sides[near] = inside & (np.abs(side) > half + 1.5)
        middle = np.zeros(z.shape, dtype=bool)
        middle[near] = inside & (np.abs(side) <= half)
        pictures = _keeps_colour(colour, middle, sides, gain, own_colour=False)
    line = np.zeros(z.shape, dtype=bool)
    line[band] = on_run & ((np.abs(across) <= half) | hit)
    return line, pictures


def _keeps_colour(colour: np.ndarray, inside: np.ndarray, around: np.ndarray, least_gain: float,
                  noise: float = 0.0, own_colour: bool = True) -> bool:
    """Whether a candidate keeps the colour of its surroundings or has one of its own (a detail of
    the picture) rather than turning grey as dust and scratches do. ``colour`` (C, h, w);
    ``inside``, ``around`` (h, w) bool; ``least_gain``: ``CHROMA_GAIN`` over the sensitivity;
    ``noise``: the std of one channel's difference of medians.

    A grey defect of tone t laid over a background b at opacity a changes each channel by
    a (t - b_c), so its chroma (the change minus its mean over the channels) is -a times the
    background's; a highlight or a shadow of the picture scales the background, keeping its
    chroma's sign. The chroma gain of the change along the background's chroma tells them apart
    where the background has colour enough (``CHROMA_MIN``). What is left of the change's chroma
    beside that must be small against the change (``COLOUR_SHIFT``) unless the noise explains it
    (``COLOUR_NOISE``): a grey defect adds no colour of its own. ``own_colour=False`` leaves that
    part out (a line's medians mix the many backgrounds it crosses, which adds colour of its own)."""
    background = np.median(colour[:, around], axis=1)  # (C,)
    change = np.median(colour[:, inside], axis=1) - background
    hue = background - background.mean()
    chroma = change - change.mean()
    strength = float(hue @ hue)
    if strength >= CHROMA_MIN ** 2:
        gain = float(chroma @ hue) / strength
        if gain > least_gain:
            return True
        chroma = chroma - gain * hue
    if not own_colour:
        return False
    shift = math.sqrt(float(chroma @ chroma) / chroma.size)
    return shift > max(COLOUR_SHIFT * abs(float(change.mean())), COLOUR_NOISE * noise)


def _trimmed(runs: np.ndarray, evidence: np.ndarray, needed: float) -> np.ndarray:
    """``runs`` with each run's ends moved in to where ``evidence`` reaches ``needed`` (the
    window that found a run reaches half its length past the scratch's ends)."""
    padded = np.concatenate(([False], runs, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    out = np.zeros_like(runs)
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        strong = np.flatnonzero(evidence[start:stop] >= needed)
        if strong.size:
            out[start + strong[0]:start + strong[-1] + 1] = True
    return out


def _long_runs(flags: np.ndarray, min_length: int) -> np.ndarray:
    """``flags`` with only its runs of True of ``min_length`` or more left."""
    padded = np.concatenate(([False], flags, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    out = np.zeros_like(flags, dtype=bool)
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        if stop - start >= min_length:
            out[start:stop] = True
    return out

"""One manifest row's (or one ``dip restore``'s) pictures: read, decode, and degrade.

``read_picture`` reads an image from any fsspec URL and decodes it (``pipeline.core.images``);
``load_inputs`` reads what a row names (the image, its mask, reference and guide) and, for an
evaluation, degrades the clean image (``pipeline.core.synthetic``), giving the keyword
arguments of ``pipeline.core.restore.restore``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import storage
from ..core.formats import DEFAULT_MAX_PIXELS, max_input_bytes
from ..core.images import Picture, decode
from ..core.synthetic import synthesize


@dataclass
class Inputs:
    """What ``restore`` takes besides the options; ``task`` and ``scale`` as a degradation set them."""

    observed: Picture
    mask: Picture | None = None
    reference: Picture | None = None
    guide: Picture | None = None
    task: str | None = None  # the degradation's task (None: no degradation)
    scale: int | None = None  # the degradation's scale (downsample:S)
    defects: Picture | None = None  # archive:/grain: the true defect mask (white = clean), for scoring only
    sigma: float | None = None  # archive:/grain: the grain's true RMS, 0-255 units

    def truth_scores(self, mask: Picture | None) -> dict:
        """The restoration's defect ``mask`` against the true one, and the true noise level:
        ``mask_precision``, ``mask_recall``, ``mask_iou``, ``noise_sigma_true`` ({} without them)."""
        from ..core.metrics import mask_scores

        scores = {} if self.sigma is None else {"noise_sigma_true": self.sigma}
        if self.defects is not None and mask is not None:
            scores.update(mask_scores(mask.pixels, self.defects.pixels))
        return scores

    def restore_kwargs(self) -> dict:
        return {"observed": self.observed, "mask": self.mask, "reference": self.reference, "guide": self.guide}


def read_picture(url: str, storage_options: dict | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 page: int | None = None, deadline: float | None = None) -> Picture:
    """Read and decode an image (``pipeline.core.images.Picture``); errors name the URL. ``page``
    (0-based) picks one page of a multi-page file, which is refused without it. Only a regular file
    or an object of at most ``max_input_bytes(max_pixels)`` is read; ``deadline`` (monotonic seconds)
    bounds the read (``storage.read_bytes``)."""
    data = storage.read_bytes(url, storage_options, max_bytes=max_input_bytes(max_pixels), deadline=deadline)
    return decode(data, name=url, max_pixels=max_pixels, page=page)


def load_inputs(uri: str, *, mask_uri: str | None = None, reference_uri: str | None = None,
                guide_uri: str | None = None, degradation: str | None = None, seed: int = 0,
                storage_options: dict | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                page: int | None = None, deadline: float | None = None) -> Inputs:
    """The pictures a row names, decoded. With ``degradation`` (``noise:25``, ``downsample:4``,
    ``mask:bernoulli:0.5``, ``jpeg:10``, ``archive:12``) ``uri`` is the clean image: it becomes the reference and
    the observation is made from it, seeded by ``seed`` (a made mask replaces ``mask_uri``'s). ``page``
    (0-based) picks the page of a multi-page ``uri``; the other files are single pictures. ``deadline``
    (``time.monotonic()`` seconds) bounds the reads."""

    def load(url: str | None, page: int | None = None) -> Picture | None:
        return read_picture(url, storage_options, max_pixels, page=page, deadline=deadline) if url else None

    inputs = Inputs(observed=load(uri, page), mask=load(mask_uri), reference=load(reference_uri), guide=load(guide_uri))
    if degradation:
        synthetic = synthesize(inputs.observed, degradation, seed)
        inputs.observed, inputs.reference = synthetic.observed, synthetic.reference
        inputs.mask = synthetic.mask or inputs.mask
        inputs.task, inputs.scale = synthetic.task, synthetic.scale
        inputs.defects, inputs.sigma = synthetic.defects, synthetic.sigma
    return inputs

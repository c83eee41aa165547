"""The evaluation suites and the paper's figures for them.

    set5-x4           the five Set5 ground truths, degraded by ``downsample:4`` in the job (Pillow
                      LANCZOS) and scored by the paper's protocol (``psnr_y``); bicubic
                      (``psnr_y_baseline``) and, with ``tv_baseline``, the TV prior (``psnr_y_tv``).
    denoise-color-25  the authors' nine noisy inputs (sigma 25) against their ground truths; the
                      noisy input is the baseline (``psnr_input``, ``psnr_baseline``).
    inpaint-samples   kate and library (text masks, inpaint-text), vase (a large hole,
                      inpaint-holes). The input file is the clean image and it is also the
                      reference: the fit sees only the pixels outside the mask (A(x) = x * m), and
                      PSNR is taken over the whole image, so the known pixels (fitted) count as
                      well as the hidden ones (inferred). ``psnr_input`` is infinite (the input is
                      the reference); the report leaves infinite values out.
    archive-synthetic the nine denoising ground truths as archive scans (``pipeline.core.synthetic``):
                      grain of sigma 5, 12 or 20 (by image) with dust and scratches (subset
                      ``defects``: ``archive:S``) and without (subset ``clean``: ``grain:S``), each
                      restored by ``archive`` and by ``denoise`` from the same observation (one
                      seed per image and subset). Scored: σ̂ against the true grain, the mask's
                      precision, recall and IoU against the planted defects, PSNR and SSIM of
                      both tasks and the oracle (the best PSNR along the fit's history).
    folder            every image under ``data`` (a folder or prefix of clean images), degraded by
                      ``degradation`` (required).

Only the standard library is imported, so that ``benchmarks.paper_tables`` can read the
paper's figures and image lists on a GPU machine without pyarrow, fsspec or Ray, and the ``dip``
command's help without torch.
"""

from __future__ import annotations

from pathlib import Path

SUITES = ("set5-x4", "denoise-color-25", "inpaint-samples", "archive-synthetic", "folder")

# The paper's figures, dB (Ulyanov, Vedaldi, Lempitsky, CVPR 2018 / IJCV 2020).
PAPER = {
    "set5-x4": {"dip": 29.90, "bicubic": 28.43, "tv": 28.86},  # Y channel, 4-pixel shave
    "denoise-color-25": {"dip": 30.43, "cbm3d": 31.42},  # DIP with the output moving average
    "inpaint-samples": {},
    "archive-synthetic": {},  # not in the paper
    "folder": {},
}
PAPER_METRIC = {"set5-x4": "psnr_y", "denoise-color-25": "psnr", "inpaint-samples": "psnr",
                "archive-synthetic": "psnr", "folder": "psnr"}

SET5 = ("baby", "bird", "butterfly", "head", "woman")
DENOISE_COLOR = ("F16", "baboon", "hill", "kodim01", "kodim02", "kodim03", "kodim12", "lena", "peppers")
INPAINT_SAMPLES = {"kate": "inpaint-text", "library": "inpaint-text", "vase": "inpaint-holes"}
# the presets each suite's paper figures were made with (another preset, or crops, is not comparable)
PAPER_PRESETS = {"set5-x4": ("sr-x4",), "denoise-color-25": ("denoise",),
                 "inpaint-samples": tuple(sorted(set(INPAINT_SAMPLES.values())))}
ARCHIVE_SIGMAS = (5, 12, 20)  # grain of the archive-synthetic suite, image i gets ARCHIVE_SIGMAS[i % 3]
ARCHIVE_TASKS = ("archive", "denoise")
DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # ../shared/data


def default_data() -> str | None:
    """``../shared/data`` beside the repository, where it exists."""
    return str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None

"""Image quality metrics: PSNR (dB), the super-resolution luminance PSNR, and SSIM, and
``score``: the metrics of a restoration against its reference and baselines.

All metrics are computed in float64 numpy and return Python floats.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import structural_similarity

from .images import to_uint8

ArrayLike = torch.Tensor | np.ndarray


def psnr(x: ArrayLike, y: ArrayLike, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: 10 log10(peak^2 / mean((x - y)^2)).

    x, y: tensors or numpy arrays of the same shape (any layout), values in [0, peak]
    (e.g. floats in [0, 1] with peak=1, or uint8 with peak=255). Returns inf when x == y.
    """
    a, b = _as_float64(x, "x"), _as_float64(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got x {list(a.shape)} and y {list(b.shape)}")
    if a.size == 0:
        raise ValueError(f"psnr of empty arrays (shape {list(a.shape)})")
    if not peak > 0:
        raise ValueError(f"peak must be > 0, got {peak!r}")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return 10 * math.log10(peak**2 / mse)


def psnr_y(x: ArrayLike, y: ArrayLike, shave: int = 4) -> float:
    """PSNR in dB of the luminance Y, the super-resolution protocol of the DIP paper.

    x, y: HxWx3 uint8 RGB numpy arrays, or [1, 3, H, W] RGB tensors in [0, 1] (these are
    quantized first: round(clamp(x, 0, 1) * 255)).
    Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on 8-bit values (ITU-R BT.601, not
    rounded), peak 255, over the image without `shave` pixels on each side.
    """
    a, b = _rgb_uint8(x, "x"), _rgb_uint8(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"psnr_y needs equal shapes, got x {list(a.shape)} and y {list(b.shape)}")
    height, width = a.shape[:2]
    if shave < 0 or height <= 2 * shave or width <= 2 * shave:
        raise ValueError(f"cannot shave {shave} pixels from each side of a {height}x{width} image")
    luma_a = _luma(a)[shave : height - shave, shave : width - shave]
    luma_b = _luma(b)[shave : height - shave, shave : width - shave]
    return psnr(luma_a, luma_b, peak=255.0)


def ssim(x: ArrayLike, y: ArrayLike) -> float:
    """Structural similarity (scikit-image's `structural_similarity`, its default uniform
    7x7 window, data_range=1), averaged over channels.

    x, y: [1, C, H, W] tensors or HxWxC / HxW float arrays, values in [0, 1].
    Images smaller than 7 px on a side use the largest odd window that fits (3 or 5);
    images smaller than 3 px return NaN (SSIM is undefined there).
    """
    a, b = _hwc_float64(x, "x"), _hwc_float64(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"ssim needs equal shapes, got x {list(a.shape)} and y {list(b.shape)}")
    side = min(a.shape[0], a.shape[1])
    if side < 3:
        return float("nan")
    win_size = min(7, side if side % 2 == 1 else side - 1)
    channel_axis = -1 if a.ndim == 3 else None
    value = structural_similarity(
        a, b, data_range=1.0, channel_axis=channel_axis, win_size=win_size
    )
    return float(value)


def _as_float64(x: ArrayLike, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    raise TypeError(f"{what} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _rgb_uint8(x: ArrayLike, what: str) -> np.ndarray:
    """HxWx3 uint8 array, or [1, 3, H, W] tensor in [0, 1] -> HxWx3 uint8."""
    if isinstance(x, torch.Tensor):
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(f"{what} must be a [1, 3, H, W] tensor, got {list(x.shape)}")
        return to_uint8(x)
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(
                f"{what} must be an HxWx3 uint8 array, got {x.dtype} {list(x.shape)}"
            )
        return x
    raise TypeError(f"{what} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _luma(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxW float64 BT.601 luminance Y in [16, 235]."""
    r, g, b = (rgb[:, :, k].astype(np.float64) for k in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def _hwc_float64(x: ArrayLike, what: str) -> np.ndarray:
    """[1, C, H, W] tensor or HxWxC / HxW float array -> HxWxC (C > 1) or HxW float64."""
    if isinstance(x, torch.Tensor):
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"{what} must be a [1, C, H, W] tensor, got {list(x.shape)}")
        array = x.detach().to("cpu", torch.float64)[0].permute(1, 2, 0).numpy()
    elif isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{what} must hold floats in [0, 1], got dtype {x.dtype}")
        if x.ndim not in (2, 3):
            raise ValueError(f"{what} must be HxWxC or HxW, got shape {list(x.shape)}")
        array = x.astype(np.float64)
    else:
        raise TypeError(f"{what} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return array


def score(task: str, restored: torch.Tensor, reference: torch.Tensor | None, observed: torch.Tensor | None = None,
          baselines: dict[str, torch.Tensor] | None = None) -> dict:
    """Metrics of ``restored`` [1, C, H, W] in [0, 1] against ``reference`` (same shape), all None
    without one (dB; SSIM in [0, 1]):

    psnr, ssim: RGB in [0, 1]; psnr_y: the paper's super-resolution protocol (Y channel, 4-pixel
    shave); psnr_input: the observed input where it has the image's size; psnr_<name> and
    psnr_y_<name> (super-resolution) for each baseline image given (``baseline``: bicubic for
    super-resolution, the input otherwise; ``tv``: the TV prior).
    """
    names = ["psnr", "ssim", "psnr_y", "psnr_input", "psnr_baseline", "psnr_y_baseline", "psnr_tv", "psnr_y_tv"]
    metrics = dict.fromkeys(names)
    if reference is None:
        return metrics
    y_protocol = task == "sr" and restored.shape[1] == 3
    metrics["psnr"] = psnr(restored, reference)
    metrics["ssim"] = ssim(restored, reference)
    if y_protocol:
        metrics["psnr_y"] = psnr_y(to_uint8(restored), to_uint8(reference))
    if observed is not None and observed.shape == reference.shape:
        metrics["psnr_input"] = psnr(observed, reference)
    for name, image in (baselines or {}).items():
        metrics[f"psnr_{name}"] = psnr(image, reference)
        if y_protocol:
            metrics[f"psnr_y_{name}"] = psnr_y(to_uint8(image), to_uint8(reference))
    return metrics


def mask_scores(found: ArrayLike, truth: ArrayLike) -> dict:
    """How well a defect mask ``found`` matches the true one (both in the ``--mask`` convention,
    white = kept; any shape that broadcasts, e.g. [1, 1, H, W]): precision, recall and IoU of the
    defect (black) pixels. Precision is None when nothing was masked, recall when there was no defect."""
    masked, defect = np.asarray(found) <= 0.5, np.asarray(truth) <= 0.5
    hits = int((masked & defect).sum())
    n_masked, n_defect, union = int(masked.sum()), int(defect.sum()), int((masked | defect).sum())
    return {"mask_precision": hits / n_masked if n_masked else None,
            "mask_recall": hits / n_defect if n_defect else None,
            "mask_iou": hits / union if union else None}

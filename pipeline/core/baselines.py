"""What DIP is compared with: the degraded input, bicubic upsampling, and the TV prior."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .operators import Denoise, Inpainting, Operator, SuperResolution, from_pil, to_pil


def bicubic(low_res: Tensor, scale: int) -> Tensor:
    """Bicubic upsampling (Pillow) of [1, C, h, w] in [0, 1] to [1, C, h*scale, w*scale]."""
    h, w = low_res.shape[-2:]
    return from_pil(to_pil(low_res).resize((w * scale, h * scale), Image.Resampling.BICUBIC))


def degraded_input(operator: Operator, observation: Tensor) -> Tensor:
    """The observation brought to image space: bicubic for super-resolution, itself otherwise."""
    if isinstance(operator, SuperResolution):
        return bicubic(observation, operator.scale)
    return observation


def total_variation(x: Tensor, eps: float = 1e-8) -> Tensor:
    """The paper's TV: Σ sqrt((x[i,j+1]−x[i,j])² + (x[i+1,j]−x[i,j])²) over [1, C, H, W]."""
    return _gradient_magnitude(x, eps).sum()


def mean_total_variation(x: Tensor, eps: float = 1e-8) -> Tensor:
    """The TV of each image of [N, C, H, W] per pixel: [N] (DIP-TV's term, on the data term's scale)."""
    return _gradient_magnitude(x, eps).flatten(1).mean(1)


def _gradient_magnitude(x: Tensor, eps: float) -> Tensor:
    """sqrt(dx² + dy² + eps) of [N, C, H, W]: [N, C, H-1, W-1] (forward differences)."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return torch.sqrt(dx**2 + dy**2 + eps)


# The TV prior's weights, chosen on a calibration set disjoint from every evaluation image
# (crops of zebra, snail, building, monkey, barbara and the no-flash cave photo; written up in
# docs/experiments/tv-calibration.md, its script in git history). Denoising: scikit-image's ROF weight
# per unit of the noise's sigma (both in [0, 1] units) at sigma 15, 25 and 50 (0-255 units), interpolated
# between them and held beyond; the others: lambda on the summed squared data term ("other": JPEG, not
# calibrated, takes super-resolution's).
TV_DENOISE_PER_SIGMA = {15: 0.6, 25: 0.6, 50: 0.7}
TV_WEIGHTS = {"sr": 0.001, "inpaint": 0.0003, "other": 0.001}
TV_ITERATIONS, TV_LR, TV_TOLERANCE = 3000, 0.02, 1e-6


def tv_weight(operator: Operator, noise_sigma: float | None = None) -> float:
    """The calibrated TV weight for an operator (``noise_sigma``: the observation's noise, 0-255 units,
    for denoising; it is estimated from the observation where the caller has no figure)."""
    if isinstance(operator, Denoise):
        sigma = operator.sigma if noise_sigma is None else noise_sigma
        per_sigma = float(np.interp(sigma, list(TV_DENOISE_PER_SIGMA), list(TV_DENOISE_PER_SIGMA.values())))
        return per_sigma * sigma / 255
    if isinstance(operator, SuperResolution):
        return TV_WEIGHTS["sr"]
    if isinstance(operator, Inpainting):
        return TV_WEIGHTS["inpaint"]
    return TV_WEIGHTS["other"]


def tv_restore(
    operator: Operator,
    observation: Tensor,
    *,
    weight: float | None = None,
    noise_sigma: float | None = None,
    iterations: int = TV_ITERATIONS,
    lr: float = TV_LR,
) -> Tensor:
    """The TV prior's restoration, solved to convergence. Returns [1, C, H, W] in [0, 1].

    Denoising (A = identity): the ROF problem ½‖x − y‖² + w·TV(x), by scikit-image's Chambolle
    solver (``denoise_tv_chambolle``), w = ``weight`` or ``tv_weight`` of the noise level
    (``noise_sigma``, 0-255 units). Any other operator: ‖A(x) − y‖² + λ·TV(x) over the pixels (the
    summed squared error, the data term DIP uses), by Adam from ``degraded_input`` with the step
    decayed to 0, until the objective improves by less than ``TV_TOLERANCE`` (relative) over 100
    iterations or ``iterations`` are done; x is kept in [0, 1].
    """
    weight = tv_weight(operator, noise_sigma) if weight is None else weight
    if not weight >= 0:
        raise ValueError(f"TV weight must be >= 0, got {weight!r}")
    if isinstance(operator, Denoise):
        from skimage.restoration import denoise_tv_chambolle

        image = observation[0].permute(1, 2, 0).double().numpy()  # (H, W, C)
        solved = denoise_tv_chambolle(image, weight=weight, eps=1e-5, max_num_iter=1000, channel_axis=-1)
        return torch.from_numpy(solved).permute(2, 0, 1)[None].to(observation.dtype).clamp(0, 1)
    x = degraded_input(operator, observation).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    previous = math.inf
    for step in range(iterations):
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(operator(x), observation, reduction="sum") + weight * total_variation(x)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        if step % 100 == 99:
            if previous - loss.item() < TV_TOLERANCE * abs(previous):
                break
            previous = loss.item()
    return x.detach()

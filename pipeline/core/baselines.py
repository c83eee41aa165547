"""What DIP is compared with: the degraded input, bicubic upsampling, and the TV prior."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .operators import Operator, SuperResolution, from_pil, to_pil


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
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return torch.sqrt(dx**2 + dy**2 + eps).sum()


def tv_restore(
    operator: Operator,
    observation: Tensor,
    *,
    weight: float = 1e-4,
    iterations: int = 500,
    lr: float = 0.01,
) -> Tensor:
    """Minimise ‖A(x) − y‖² + λ·TV(x) over the pixels x, with the same data term as DIP.

    The data term is the summed squared error (so λ does not depend on the image size);
    x starts at ``degraded_input`` and is kept in [0, 1]. Returns [1, C, H, W] in [0, 1].
    """
    if not weight >= 0:
        raise ValueError(f"TV weight must be >= 0, got {weight!r}")
    x = degraded_input(operator, observation).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    for _ in range(iterations):
        optimizer.zero_grad(set_to_none=True)
        data = F.mse_loss(operator(x), observation, reduction="sum")
        loss = data + weight * total_variation(x)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return x.detach()

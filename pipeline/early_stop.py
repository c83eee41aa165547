"""Early stopping without ground truth: the windowed moving-variance detector (ES-WMV).

Wang, Li, Zhuang, Chen, Liang, Sun, "Early Stopping for Deep Image Prior" (TMLR 2023).
DIP first fits the image, then the noise. While it fits the image the outputs still move;
the running variance of the last ``window`` outputs falls to a minimum near the PSNR peak
and rises again as the noise gets fitted. The detector keeps the output at the variance
minimum and signals a stop once no new minimum has come for ``patience`` checks.

Everything stays on the device: ``update`` does no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class EarlyStopConfig:
    window: int = 100  # W: outputs in the moving window
    patience: int = 1000  # P: checks without a new variance minimum before stopping

    def __post_init__(self):
        if self.window < 2:
            raise ValueError(f"early-stop window must be >= 2, got {self.window!r}")
        if self.patience < 1:
            raise ValueError(f"early-stop patience must be >= 1, got {self.patience!r}")


class MovingVariance:
    """Ring buffer of the last W outputs [1, C, H, W] and the minimum of their variance."""

    def __init__(self, config: EarlyStopConfig):
        self.config = config
        self.buffer: Tensor | None = None  # [W, C, H, W]
        self.count = 0
        self.best_variance: Tensor | None = None  # scalar on the device
        self.best_image: Tensor | None = None  # the candidate image at the minimum
        self.best_iteration: Tensor | None = None  # scalar on the device
        self.since_best: Tensor | None = None  # checks since the last minimum

    def update(self, output: Tensor, candidate: Tensor, iteration: int) -> None:
        """Add one raw network output; ``candidate`` is what would be returned at this point."""
        output = output.detach()[0].float()
        if self.buffer is None:
            w = self.config.window
            self.buffer = torch.zeros((w, *output.shape), device=output.device)
            self.best_variance = torch.tensor(float("inf"), device=output.device)
            self.best_image = candidate.detach().clone()
            self.best_iteration = torch.tensor(iteration, device=output.device)
            self.since_best = torch.tensor(0, device=output.device)
        self.buffer[self.count % self.config.window] = output
        self.count += 1
        if self.count < self.config.window:
            return
        # VAR_t = 1/W Σ_w ‖x_{t-w} − mean‖², per pixel summed then averaged over pixels
        variance = self.buffer.var(dim=0, unbiased=False).mean()
        improved = variance < self.best_variance
        self.best_variance = torch.where(improved, variance, self.best_variance)
        self.best_image = torch.where(improved, candidate.detach(), self.best_image)
        self.best_iteration = torch.where(improved, torch.tensor(iteration, device=output.device), self.best_iteration)
        self.since_best = torch.where(improved, torch.zeros_like(self.since_best), self.since_best + 1)

    def should_stop(self) -> bool:
        """Reads the device state (one host sync): call it every few iterations, not every one."""
        return self.since_best is not None and int(self.since_best) >= self.config.patience

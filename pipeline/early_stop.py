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
    patience: int = 1000  # P: iterations without a new variance minimum before stopping
    dry_run: bool = False  # detect and keep the output at the minimum, but run the whole budget (to measure)

    def __post_init__(self):
        if self.window < 2:
            raise ValueError(f"early-stop window must be >= 2, got {self.window!r}")
        if self.patience < 1:
            raise ValueError(f"early-stop patience must be >= 1, got {self.patience!r}")


class MovingVariance:
    """The windowed variance of the last W outputs of N fits at once ([N, C, H, W], N = 1 for one
    image) and, per image, the output at its minimum.

    The window's sum and sum of squares are kept in float64, so one update costs O(N·C·H·W)
    whatever W is. An image whose detector has fired (no new minimum for ``patience``
    iterations) is frozen: a later minimum does not replace its output, exactly as if its own
    fit had stopped there.
    """

    def __init__(self, config: EarlyStopConfig):
        self.config = config
        self.buffer: Tensor | None = None  # [W, N, C, H, W], the last W outputs
        self.count = 0
        self.best_image: Tensor | None = None  # [N, C, H, W], the candidate at each image's minimum
        self.best_iteration: Tensor | None = None  # [N]
        self.variance: Tensor | None = None  # [N], the window's variance at the last update

    def update(self, output: Tensor, candidate: Tensor, iteration: int) -> None:
        """Add one raw network output [N, C, H, W]; ``candidate`` is what would be returned now."""
        output = output.detach().float()
        w = self.config.window
        if self.buffer is None:
            n, device = output.shape[0], output.device
            self.buffer = torch.zeros((w, *output.shape), device=device)
            self.sum = torch.zeros(output.shape, device=device, dtype=torch.float64)
            self.sum_sq = torch.zeros(output.shape, device=device, dtype=torch.float64)
            self.best_variance = torch.full((n,), float("inf"), device=device, dtype=torch.float64)
            self.best_image = candidate.detach().clone()
            self.best_iteration = torch.full((n,), iteration, device=device)
            self.since_best = torch.zeros(n, device=device, dtype=torch.long)
        slot = self.count % w
        old = self.buffer[slot].double()
        new = output.double()
        self.sum.add_(new - old)
        self.sum_sq.add_(new * new - old * old)
        self.buffer[slot] = output
        self.count += 1
        if self.count < w:
            return
        # VAR_t = 1/W Σ_w ‖x_{t-w} − mean‖², per pixel, averaged over each image's pixels
        mean = self.sum / w
        variance = (self.sum_sq / w - mean * mean).flatten(1).mean(1)  # [N]
        self.variance = variance
        frozen = self.since_best >= self.config.patience
        improved = (variance < self.best_variance) & ~frozen
        self.best_variance = torch.where(improved, variance, self.best_variance)
        self.best_image = torch.where(improved.view(-1, 1, 1, 1), candidate.detach(), self.best_image)
        self.best_iteration = torch.where(improved, iteration, self.best_iteration)
        waited = torch.where(frozen, self.since_best, self.since_best + 1)
        self.since_best = torch.where(improved, 0, waited)

    def stopped(self) -> Tensor | None:
        """[N] bool on the device: which images' detectors have fired (None before any update)."""
        return None if self.buffer is None else self.since_best >= self.config.patience

    def should_stop(self) -> bool:
        """True once every image's detector has fired. One host sync: call it every few iterations."""
        stopped = self.stopped()
        return stopped is not None and bool(stopped.all())

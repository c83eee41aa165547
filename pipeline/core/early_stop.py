"""Early stopping without ground truth: the windowed moving-variance detector (ES-WMV).

Wang, Li, Zhuang, Chen, Liang, Sun, "Early Stopping for Deep Image Prior" (TMLR 2023).
DIP first fits the image, then the noise. While it fits the image the outputs still move;
the running variance of the last ``window`` outputs falls to a minimum near the PSNR peak
and rises again as the noise gets fitted. The detector keeps the output at the variance
minimum and signals a stop once no new minimum has come for ``patience`` iterations.

Two additions to the paper's rule, both off by default (they reduce to it):
- ``start``: minima before this iteration do not count. At the very start the outputs are
  still close to the network's initial grey image and barely move, so the variance can be at
  its lowest before the fit has begun.
- ``tolerance``: only a minimum at least this fraction below the last counted one restarts
  the patience (PyTorch's ReduceLROnPlateau ``threshold_mode="rel"``). Near the PSNR peak the
  variance creeps down by fractions of a percent for hundreds of iterations; without a
  tolerance each creep restarts the patience. The output kept is still the one at the lowest
  variance.

Everything stays on the device: ``update`` does no host synchronisation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import EarlyStopConfig

__all__ = ["Discrepancy", "EarlyStopConfig", "MovingVariance"]


class MovingVariance:
    """The windowed variance of the last W outputs of N fits at once ([N, C, H, W], N = 1 for one
    image) and, per image, the output at its minimum.

    The window's sum and sum of squares are kept in float64, so one update costs O(N·C·H·W)
    whatever W is. An image whose detector has fired (no counted minimum for ``patience``
    iterations) is frozen: a later minimum does not replace its output, exactly as if its own
    fit had stopped there.
    """

    def __init__(self, config: EarlyStopConfig):
        self.config = config
        self.buffer: Tensor | None = None  # [W, N, C, H, W], the last W outputs
        self.count = 0
        self.iteration = 0  # of the last observation
        self.best_image: Tensor | None = None  # [N, C, H, W], the candidate at each image's minimum
        self.best_iteration: Tensor | None = None  # [N]
        self.variance: Tensor | None = None  # [N], the window's variance at the last update

    def update(self, output: Tensor, candidate: Tensor, iteration: int) -> None:
        """Add one raw network output [N, C, H, W]; ``candidate`` is what would be returned now."""
        output = output.detach().float()
        w = self.config.window
        if self.buffer is None:
            self.buffer = torch.zeros((w, *output.shape), device=output.device)
            self.sum = torch.zeros(output.shape, device=output.device, dtype=torch.float64)
            self.sum_sq = torch.zeros(output.shape, device=output.device, dtype=torch.float64)
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
        self.observe((self.sum_sq / w - mean * mean).flatten(1).mean(1), candidate, iteration)

    def check(self, candidate: Tensor, residuals: list[float], iteration: int) -> None:
        """Nothing at the checks: the variance is updated every iteration (``update``)."""

    def observe(self, variance: Tensor, candidate: Tensor, iteration: int) -> None:
        """The stopping rule, given each image's window variance [N] at ``iteration`` (``update``
        calls it every iteration once the window is full; a recorded curve can be replayed
        through it at any resolution, since the patience counts iterations)."""
        self.variance = variance = variance.to(torch.float64)
        if iteration < self.config.start:
            return  # no candidate yet: a fit that ends here returns its last output
        if self.best_image is None:
            n, device = variance.shape[0], variance.device
            self.best_variance = torch.full((n,), float("inf"), device=device, dtype=torch.float64)
            self.level = self.best_variance.clone()  # the last minimum that restarted the patience
            self.counted_at = torch.zeros(n, device=device, dtype=torch.long)  # ... and its iteration
            self.best_image = candidate.detach().clone()
            self.best_iteration = torch.full((n,), iteration, device=device, dtype=torch.long)
        frozen = self.stopped()
        self.iteration = iteration
        improved = (variance < self.best_variance) & ~frozen  # a new minimum: keep this output
        counted = (variance < self.level * (1 - self.config.tolerance)) & ~frozen  # ... and restart the patience
        self.best_variance = torch.where(improved, variance, self.best_variance)
        self.best_image = torch.where(improved.view(-1, *[1] * (candidate.dim() - 1)), candidate.detach(),
                                      self.best_image)
        self.best_iteration = torch.where(improved, iteration, self.best_iteration)
        self.level = torch.where(counted, variance, self.level)
        self.counted_at = torch.where(counted, iteration, self.counted_at)

    def stopped(self) -> Tensor | None:
        """[N] bool on the device: which images' detectors have fired (None before the first
        counted observation)."""
        if self.best_image is None:
            return None
        return (self.level < float("inf")) & (self.iteration >= self.fired_at())

    def fired_at(self) -> Tensor | None:
        """[N]: the iteration at which each image's detector fires (or fired): its last counted
        minimum + patience (None before the first counted observation)."""
        return None if self.best_image is None else self.counted_at + self.config.patience

    def should_stop(self) -> bool:
        """True once every image's detector has fired. One host sync: call it every few iterations."""
        stopped = self.stopped()
        return stopped is not None and bool(stopped.all())


class Discrepancy:
    """The discrepancy principle for N fits at once: image n stops at the first check where the
    residual ‖A(x_n) − y_n‖² / size of its candidate is at most (margin · σ_n)², σ_n its noise
    level in [0, 1] units; its output is that candidate, frozen. A fit fitted past its noise floor
    fits the noise; one that never reaches it (or whose σ is unknown: NaN) keeps its last output.

    Same interface as ``MovingVariance`` where the fit loop uses it: ``update`` (nothing to do per
    iteration), ``check`` at each check with the residuals, ``should_stop``, ``stopped``,
    ``fired_at``, ``best_image``, ``best_iteration``.
    """

    def __init__(self, config: EarlyStopConfig, sigmas: list[float]):
        if not sigmas or not all(s >= 0 or math.isnan(s) for s in sigmas):
            raise ValueError(f"the discrepancy rule needs a noise level >= 0 per image, got {sigmas!r}")
        self.config = config
        # residual MSE to reach, [0, 1]² units; -1 (never) where the noise level is unknown (NaN: a tiny image)
        self.targets = [-1.0 if math.isnan(s) else (config.margin * s) ** 2 for s in sigmas]
        self.best_image: Tensor | None = None
        self.best_iteration: Tensor | None = None
        self.reached_at: list[int | None] = [None] * len(sigmas)
        self.variance = None  # no variance to record

    def update(self, output: Tensor, candidate: Tensor, iteration: int) -> None:
        """Nothing per iteration: the rule is checked at the check cadence (``check``)."""

    def check(self, candidate: Tensor, residuals: list[float], iteration: int) -> None:
        """``candidate`` [N, C, H, W] and each image's residual MSE now; freeze those that reached."""
        if self.best_image is None:
            self.best_image = candidate.detach().clone()
            self.best_iteration = torch.full((len(residuals),), iteration, dtype=torch.long)
        for n, (residual, target) in enumerate(zip(residuals, self.targets, strict=True)):
            if self.reached_at[n] is None:
                self.best_image[n] = candidate[n].detach()
                self.best_iteration[n] = iteration
                if residual <= target:
                    self.reached_at[n] = iteration

    def stopped(self) -> Tensor:
        return torch.tensor([r is not None for r in self.reached_at])

    def fired_at(self) -> Tensor:
        return torch.tensor([-1 if r is None else r for r in self.reached_at])

    def should_stop(self) -> bool:
        return all(r is not None for r in self.reached_at)

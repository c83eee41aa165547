"""The DIP fit loop: fit θ so that A(f_θ(z)) matches the observation y, and stop early.

``fit_many`` holds the whole algorithm in one function, top to bottom, with numbered steps
(``fit`` is the one-image case); the loss ``‖A(f(z)) − y‖²`` is written there. How each step
runs on the device (precision, memory format, compilation, CUDA graphs) is
``pipeline.core.engine``'s business, not what it computes.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .baselines import mean_total_variation
from .config import FitConfig
from .early_stop import Discrepancy, MovingVariance
from .engine import (
    EngineConfig,
    align_channels,
    autocast,
    begin_step,
    check_engine,
    compile_step,
    cudnn_benchmark,
    drop_running_stats,
    make_optimizer,
    to_memory_format,
)
from .nets import crop_center
from .operators import Operator

__all__ = ["FitConfig", "FitDiverged", "FitResult", "FitTimeout", "Progress", "fit", "fit_many"]
Progress = Callable[[int, int, "dict | None"], None]  # (iterations done, of, the history entry written or None)


class FitDiverged(RuntimeError):
    """The loss became NaN/inf, or backtracking could not recover the fit."""


class FitTimeout(RuntimeError):
    """The fit ran past its time limit."""


@dataclass
class FitResult:
    """One image's fit: its output and what the loop did (iterations, seconds, history)."""

    image: Tensor  # [1, C, H, W] in [0, 1], on the CPU, float32
    best_iteration: int  # the iteration whose output is returned
    iterations: int  # iterations actually run
    stopped_early: bool  # the early-stopping detector fired (and the loop stopped, unless dry_run)
    backtracks: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # one entry every check_every iterations
    fired_at: int | None = None  # the iteration at which the detector fired (None: it did not)

    @property
    def iterations_per_second(self) -> float:
        return self.iterations / self.seconds if self.seconds > 0 else float("nan")


def fit(
    net: nn.Module,
    net_input: Tensor,
    operator: Operator,
    observation: Tensor,
    config: FitConfig,
    *,
    reference: Tensor | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    time_limit_s: float | None = None,
    engine: EngineConfig | None = None,
    noise_sigma: float | list[float] | None = None,
    progress: Progress | None = None,
) -> FitResult:
    """Fit ``net`` so that ``operator(net(net_input))`` matches ``observation``.

    net_input: z, [1, Cz, H', W'] on the network's grid (H', W' >= the image size).
    observation: y, [1, C, h, w] in [0, 1] (or a feature map for feature inversion).
    reference: the clean image [1, C, H, W] in [0, 1], only for reporting PSNR.
    time_limit_s: raise FitTimeout once the fit has run this long (checked every iteration).
    engine: how the iterations run (precision, memory format, compilation; see
        ``pipeline.core.engine``); None = ``EngineConfig.fast(device)``. It changes the speed, not the
        result (up to rounding: bf16 autocast rounds the forward pass).
    noise_sigma: the observation's noise level in [0, 1] units (σ / 255), for the discrepancy
        rule (``config.early_stop.rule == "discrepancy"``).
    progress: called as ``progress(iteration, iterations, entry)`` after every iteration, ``entry``
        the history entry written at it (loss, PSNR) or None.
    The network's output is cropped (centred) to ``operator.image_size(h, w)``.
    """
    if net_input.shape[0] != 1:
        raise ValueError(f"fit takes one image (z of batch 1), got z {list(net_input.shape)}; use fit_many")
    return fit_many(net, net_input, operator, observation, config, reference=reference, seeds=[seed],
                    device=device, dtype=dtype, time_limit_s=time_limit_s, engine=engine,
                    noise_sigma=None if noise_sigma is None else [noise_sigma], progress=_one(progress))[0]


def fit_many(
    net: nn.Module,
    net_input: Tensor,
    operator: Operator,
    observation: Tensor,
    config: FitConfig,
    *,
    reference: Tensor | None = None,
    seeds: list[int],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    time_limit_s: float | None = None,
    engine: EngineConfig | None = None,
    noise_sigma: list[float] | None = None,
    progress: Progress | None = None,
) -> list[FitResult]:
    """N independent fits in one loop: ``fit`` for a batch (see ``pipeline.core.packed``).

    net maps z [N, Cz, H', W'] to [N, C, H', W'] with one independent network per image (N = 1:
    any DIP net). observation [N, C, h, w], reference [N, C, H, W] or None, seeds: one per image
    (it seeds that image's input jitter). The loss is the sum of the N images' mean squared
    errors, so each network gets exactly its own gradient; Adam is elementwise, so each image's
    fit is the fit it would have alone (up to rounding). Backtracking restores the whole pack;
    with early stopping the loop runs until every image's detector has fired. noise_sigma: one noise
    level per image ([0, 1] units) for the discrepancy rule.
    """
    # 1. Put everything on the device, in the engine's memory format; z and its jitter are seeded.
    started = time.perf_counter()
    device = torch.device(device)
    engine = EngineConfig.fast(device) if engine is None else engine
    check_engine(engine, dtype)
    n = net_input.shape[0]
    if len(seeds) != n or observation.shape[0] != n:
        raise ValueError(f"fit_many needs one seed and one observation per input: z has {n}, "
                         f"{len(seeds)} seed(s), observation {list(observation.shape)}")
    net = drop_running_stats(net.to(device=device, dtype=dtype).train())
    net = align_channels(net, engine.align_channels)  # a packed net has no Conv2d modules: unchanged
    operator = operator.to(device=device, dtype=dtype)
    net, z = to_memory_format(net, net_input.to(device=device, dtype=dtype), engine)
    y = observation.to(device=device, dtype=dtype)
    ref = reference.to(device=device, dtype=torch.float32) if reference is not None else None
    height, width = operator.image_size(*y.shape[-2:])
    generators = [torch.Generator(device=z.device).manual_seed(s) for s in seeds]
    jitter = torch.empty(z.shape, device=device, dtype=dtype)  # contiguous: the same draws in every memory format
    optimizer = make_optimizer(net, config.lr, engine, device)
    stopper = _detector(config, noise_sigma, n)

    ema: Tensor | None = None
    tail, tail_count = None, 0  # the sum of the last average_last outputs, and their count
    tail_from = config.iterations - config.average_last if config.average_last else math.inf
    checkpoint = _snapshot(net, optimizer, ema)
    last_good_loss = math.inf
    jump = 10 ** (config.backtrack_drop_db / 10)
    backtracks, stopped_early, history = 0, False, []

    with cudnn_benchmark(engine, device):
        def forward_loss(z_i: Tensor) -> tuple[Tensor, Tensor]:
            """Step 3: x = f(z_i) cropped to the image; loss = Σ_n ‖A(x_n) − y_n‖² / size (fp32),
            + tv_weight · TV(x_n) / size with DIP-TV."""
            with autocast(engine, device):
                x = crop_center(net(z_i), height, width)  # [N, C, H, W]
                loss = (operator(x).float() - y.float()).square().flatten(1).mean(1).sum()  # scalar
                if config.tv_weight > 0:
                    loss = loss + config.tv_weight * mean_total_variation(x.float()).sum()
            return x, loss

        forward_loss = compile_step(forward_loss, net, z, engine)  # eager unless the engine compiles it
        i = 0
        while i < config.iterations:
            i += 1
            if time_limit_s is not None and time.perf_counter() - started > time_limit_s:
                raise FitTimeout(f"the fit ran past its time limit of {time_limit_s:.3g} s at iteration {i}")
            # 2. Jitter the input (reg_noise_std) so that the net cannot memorise one z.
            z_i = z
            if config.reg_noise_std > 0:
                for g, generator in enumerate(generators):
                    jitter[g].normal_(generator=generator)
                z_i = z + jitter * config.reg_noise_std

            # 3. Forward: x = f(z) on the grid, cropped to the image, and the loss ‖A(x) − y‖².
            begin_step(engine)
            x, loss = forward_loss(z_i)  # [N, C, H, W], scalar

            # 4. Every check_every iterations: one host sync for the loss (every iteration in the
            #    plain engine, as the reference code does).
            if engine.host_sync_every_iteration:
                loss.item()
            if i % config.check_every == 0 or i == config.iterations:
                loss_value = loss.item()
                bad = not math.isfinite(loss_value) or loss_value > last_good_loss * jump
                if bad and not config.backtrack:
                    raise FitDiverged(f"loss became {loss_value} at iteration {i}; try backtracking or a lower lr")
                if bad:
                    # Backtrack: restore weights, optimizer state and EMA; do not apply this step.
                    backtracks += 1
                    if backtracks > config.max_backtracks:
                        raise FitDiverged(f"gave up after {config.max_backtracks} backtracks at iteration {i}")
                    ema = _restore(net, optimizer, checkpoint)
                    with torch.no_grad():
                        candidate = ema if ema is not None else crop_center(net(z), height, width).float()
                    continue
                last_good_loss = loss_value
                if config.backtrack:
                    checkpoint = _snapshot(net, optimizer, ema)

            # 5. Step.
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            # 6. Output moving average and the early-stopping detector (all on the device). A CUDA
            #    graph's output is overwritten by its next replay: copy it.
            with torch.no_grad():
                x = x.detach().to(torch.float32, copy=engine.cuda_graphs)
                if config.ema is not None:
                    ema = x.clone() if ema is None else ema.mul_(config.ema).add_(x, alpha=1 - config.ema)
                candidate = ema if ema is not None else x
                if i > tail_from:  # late iterates averaged: the mean of the raw outputs so far in the tail
                    tail, tail_count = x.clone() if tail is None else tail.add_(x), tail_count + 1
                    candidate = tail / tail_count
                if stopper is not None:
                    stopper.update(x, candidate, i)

            # 7. History, and the early-stopping decision, at the check cadence.
            checked = i % config.check_every == 0 or i == config.iterations
            if checked:
                with torch.no_grad():
                    entry = {"iteration": i, "loss": loss_value, "seconds": time.perf_counter() - started}
                    if operator.observes_image:
                        entry["psnr_observation"] = _psnr_each(operator(candidate.to(dtype)), y)
                    if ref is not None:
                        entry["psnr_reference"] = _psnr_each(candidate, ref)
                    if stopper is not None and stopper.variance is not None:
                        entry["variance"] = stopper.variance.tolist()
                    history.append(entry)
                if stopper is not None and operator.observes_image:  # each candidate's residual, [0, 1]² units
                    stopper.check(candidate, [10 ** (-p / 10) for p in entry["psnr_observation"]], i)
                if stopper is not None and not config.early_stop.dry_run and stopper.should_stop():
                    stopped_early = True
                    break
            if progress is not None:
                progress(i, config.iterations, history[-1] if checked else None)

    # 8. The results: each image's output at its variance minimum when early stopping, else the last.
    if stopper is not None and stopper.best_image is not None:
        images, best = stopper.best_image, stopper.best_iteration.tolist()
        fired = stopper.stopped().tolist()
        fired_at = stopper.fired_at().tolist()
    else:
        images, best, fired, fired_at = candidate, [i] * n, [False] * n, [None] * n
    images = images.detach().float().cpu()
    if not torch.isfinite(images).all():
        raise FitDiverged("the fitted image has NaN or inf values")
    seconds = time.perf_counter() - started
    return [
        FitResult(
            image=images[g : g + 1].clamp(0, 1),
            best_iteration=int(best[g]),
            iterations=i,
            stopped_early=stopped_early or bool(fired[g]),
            backtracks=backtracks,
            seconds=seconds,
            history=[{k: v[g] if isinstance(v, list) else v for k, v in entry.items()} for entry in history],
            fired_at=int(fired_at[g]) if fired[g] else None,
        )
        for g in range(n)
    ]


def _one(progress: Progress | None) -> Progress | None:
    """A one-image progress callback as ``fit_many`` calls it: each entry's per-image lists unwrapped."""
    if progress is None:
        return None
    return lambda i, total, entry: progress(i, total, None if entry is None else {
        k: v[0] if isinstance(v, list) else v for k, v in entry.items()})


def _detector(config: FitConfig, noise_sigma: list[float] | None, n: int) -> MovingVariance | Discrepancy | None:
    """The early-stopping detector of ``config`` for n images (None: a fixed budget)."""
    if config.early_stop is None:
        return None
    if config.early_stop.rule == "wmv":
        return MovingVariance(config.early_stop)
    if noise_sigma is None or len(noise_sigma) != n:  # (an image's entry may be NaN: unknown, never stops)
        raise ValueError(f"the discrepancy rule needs one noise level per image (noise_sigma), got {noise_sigma!r}")
    return Discrepancy(config.early_stop, list(noise_sigma))


def _psnr_each(x: Tensor, y: Tensor) -> list[float]:
    """PSNR (dB, peak 1) of each image of two [N, ...] batches: one host sync for all N."""
    mse = (x.float() - y.float()).square().flatten(1).mean(1).double()
    return (10 * torch.log10(1 / mse)).tolist()


def _snapshot(net: nn.Module, optimizer: torch.optim.Optimizer, ema: Tensor | None) -> dict:
    return {
        "net": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "ema": None if ema is None else ema.clone(),
    }


def _restore(net: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: dict) -> Tensor | None:
    net.load_state_dict(checkpoint["net"])
    optimizer.load_state_dict(copy.deepcopy(checkpoint["optimizer"]))
    return None if checkpoint["ema"] is None else checkpoint["ema"].clone()

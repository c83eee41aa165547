"""Packing: N independent DIP networks as one batched computation.

A 256x256 fit leaves most of a large GPU idle. ``PackedNets`` stacks N independent networks'
parameters ([N, ...] each, ``torch.func.stack_module_state``) and runs them with
``torch.func.vmap``: convolutions become grouped convolutions over the N images, one kernel per
layer instead of N. ``restore_many`` prepares each image exactly as ``pipeline.core.restore.restore``
would (same seeded input and network) and fits them together with ``fit_many``; ``pack_key`` says
which images may share a pack.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .engine import drop_running_stats
from .fit import fit_many
from .images import Picture
from .memory import GiB, memory_budget, memory_needed
from .options import Options
from .prepare import Restoration, finish, prepare

PACKABLE_TASKS = ("denoise", "jpeg", "sr", "inpaint", "archive")


class PackedNets(nn.Module):
    """N independent copies of one architecture: z [N, Cz, H, W] -> [N, C, H, W], image n through net n.

    BatchNorm uses each image's own statistics (its net sees a batch of one), so image n's
    output is what net n alone gives (up to rounding). Running statistics are dropped
    (``drop_running_stats``): a DIP net never uses them.
    """

    def __init__(self, nets: Sequence[nn.Module]):
        super().__init__()
        if not nets:
            raise ValueError("PackedNets needs at least one network")
        nets = [drop_running_stats(net) for net in nets]
        shapes = {tuple((k, tuple(v.shape)) for k, v in net.named_parameters()) for net in nets}
        if len(shapes) != 1:
            raise ValueError("PackedNets needs networks of one architecture (same parameter names and shapes)")
        params, _ = stack_module_state(list(nets))
        self.names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[name].detach().clone()) for name in self.names])
        self._base = [copy.deepcopy(nets[0]).to("meta")]  # a list: not a registered submodule

    def forward(self, z: Tensor) -> Tensor:
        base, names = self._base[0], self.names

        def one(weights: tuple[Tensor, ...], z_n: Tensor) -> Tensor:
            return functional_call(base, dict(zip(names, weights, strict=True)), (z_n.unsqueeze(0),)).squeeze(0)

        return vmap(one)(tuple(self.stacked), z)

    def net(self, n: int) -> dict[str, Tensor]:
        """The parameters of network n, by name (a state dict for one of the packed nets)."""
        return {name: p[n].detach() for name, p in zip(self.names, self.stacked, strict=True)}


# -----------------------------------------------------------------------------
# packs: N same-size images in one batched fit


def pack_key(observed: Picture, options: Options) -> tuple | None:
    """Images with equal keys can share one packed fit (``restore_many``): every option but the
    seed and the time limit (what is left of it once the inputs are read differs from image to image;
    the pack takes its first image's), and the image's channels and size. None = fit it alone."""
    if options.task not in PACKABLE_TASKS or options.restarts > 1:
        return None
    return (replace(options, seed=0, time_limit_s=None), observed.channels, observed.height, observed.width)


def restore_many(items: Sequence[dict]) -> list[Restoration]:
    """Restore several same-size images in one packed fit (``PackedNets``).

    items: one dict per image with the keyword arguments of ``restore``: ``observed``, ``options``
    and optionally ``mask`` and ``reference``. All must share
    ``pack_key``; each keeps its own seed (input, network and jitter), so each result is the one
    ``restore`` gives (up to rounding).
    The time limit is per image, as in ``restore``: the pack of N gets N times it (its images are
    one size and one preset, so they cost the same).
    """
    if not items:
        return []
    keys = {pack_key(item["observed"], item["options"]) for item in items}
    if None in keys or len(keys) != 1:
        raise ValueError(f"restore_many needs images of one packable kind (tasks {PACKABLE_TASKS}, one size, one "
                         f"preset, one device); got keys {sorted(map(str, keys))}")
    needed, budget = memory_needed(items[0]["observed"], items[0]["options"]) * len(items), \
        memory_budget(items[0]["options"])
    if needed > budget:
        raise ValueError(f"a pack of {len(items)} images needs about {needed / GiB:.1f} GiB, over the "
                         f"{budget / GiB:.1f} GiB budget: pack fewer")
    jobs = [prepare(item["observed"], item["options"], mask=item.get("mask"), reference=item.get("reference"))
            for item in items]
    first, options = jobs[0], jobs[0].options
    references = [job.reference for job in jobs]
    reference = torch.cat(references) if all(r is not None for r in references) else None
    results = fit_many(
        PackedNets([job.net for job in jobs]), torch.cat([job.z for job in jobs]),
        first.operator.stack([job.operator for job in jobs]), torch.cat([job.y for job in jobs]), first.preset.fit,
        reference=reference, seeds=[job.options.seed for job in jobs], device=options.device,
        time_limit_s=None if options.time_limit_s is None else options.time_limit_s * len(jobs),
        noise_sigma=[job.noise_floor for job in jobs],
    )
    return [finish(job, result) for job, result in zip(jobs, results, strict=True)]

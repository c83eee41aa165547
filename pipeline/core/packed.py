"""Packing: N independent DIP networks as one batched computation.

A 256x256 fit leaves most of a large GPU idle. ``PackedNets`` stacks N independent networks'
parameters ([N, ...] each, ``torch.func.stack_module_state``) and runs them with
``torch.func.vmap``: convolutions become grouped convolutions over the N images, one kernel per
layer instead of N. ``pipeline.core.restore.restore_many`` prepares each image exactly as
``restore`` would (same seeded input and network) and fits them together with ``fit_many``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .engine import drop_running_stats


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

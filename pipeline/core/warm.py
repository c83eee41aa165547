"""Warm starts: a fit that starts from fitted weights instead of a random network.

Every DIP fit starts from a random network, although the tiles of one scan (and the scans of one
collection) share their statistics. Three starts (``Options.warm_start``):

- ``neighbour``: the tiles of one image are fitted in serpentine order (row by row, every other
  row right to left), so that each tile but the first has just fitted an adjacent one; it starts
  from that network's weights and the first tile's input z (``pipeline.core.restore.restore_tiled``);
- ``shrink``: the same chain, but each tile starts from "shrink and perturb" (Ash and Adams,
  NeurIPS 2020): ``SHRINK`` times the neighbour's weights plus the rest of its own seeded random
  network, with its own input z. A network that has fitted its neighbour to the end has lost the
  plasticity a fresh one has; the random share gives it back, the fitted share keeps what the
  tiles share;
- ``collection``: a fit starts from weights learned on a few images of the same collection by
  ``learn_initial`` (Reptile: short fits from the current weights, the weights moved a step
  towards each fitted network; ``pipeline.core.collection``), which the batch job stores under its
  output and reuses.

A warm-started fit reaches the quality of a cold one sooner and may also overfit sooner, so it
runs with early stopping on unless asked otherwise (``Options.resolve``).
``benchmarks/iterations_to_quality.py`` measures each against cold fits.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

CHAINED = ("neighbour", "shrink")  # the starts that chain the tiles of one image
SHRINK = 0.5  # shrink: the neighbour's share of the start; the rest is the tile's own random network


@dataclass(frozen=True)
class Start:
    """Where a fit starts: a network's weights (a state dict on the CPU, as ``weights_of`` gives
    them) and, to go on from a neighbour's fit, the seed of the input z that fit used (None: the
    fit's own seed). ``share``: the weights' share of the start, the rest being the fit's own seeded
    random network (1: the weights alone; ``SHRINK`` for ``shrink``)."""

    weights: dict[str, Tensor]
    input_seed: int | None = None
    share: float = 1.0


def weights_of(net: nn.Module) -> dict[str, Tensor]:
    """The parameters of a fitted ``net`` (CPU copies; BatchNorm's running statistics, which a DIP
    net never reads, are not kept) as a plain network of its config holds them: convolutions that
    the engine padded to aligned channel counts (``ChannelPaddedConv2d``) are cut back to their own
    channels. ``load_weights`` puts them into a fresh network."""
    from .engine import ChannelPaddedConv2d

    state = {name: value.detach().float().cpu().clone() for name, value in net.named_parameters()}
    for name, module in net.named_modules():
        if isinstance(module, ChannelPaddedConv2d) and module.extra:
            key = f"{name}.weight"
            state[key] = state[key][:, :state[key].shape[1] - module.extra].contiguous()
    return state


def load_weights(net: nn.Module, weights: dict[str, Tensor], share: float = 1.0) -> None:
    """Put ``weights`` (``weights_of``) into ``net``, or with ``share`` < 1 that share of them plus
    the rest of ``net``'s own parameters; ValueError naming what does not match."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"a warm start's share of fitted weights must be in (0, 1], got {share!r}")
    own = dict(net.named_parameters())
    missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    wrong = sorted(name for name in set(own) & set(weights) if own[name].shape != weights[name].shape)
    if missing or extra or wrong:
        raise ValueError(f"the warm-start weights do not fit this network: missing {missing[:3]}, unexpected "
                         f"{extra[:3]}, other shapes {wrong[:3]} (learned for another preset or channel count?)")
    with torch.no_grad():
        for name, parameter in own.items():
            parameter.mul_(1.0 - share).add_(weights[name].to(parameter.device), alpha=share)


def chained_start(weights: dict[str, Tensor], kind: str, first_seed: int) -> Start:
    """The start of the next tile in a chain of ``kind`` (``CHAINED``) after a tile fitted to
    ``weights``: neighbour goes on from them with the first tile's input (seed ``first_seed``);
    shrink takes ``SHRINK`` of them and the tile's own input."""
    if kind == "shrink":
        return Start(weights, input_seed=None, share=SHRINK)
    if kind == "neighbour":
        return Start(weights, input_seed=first_seed)
    raise ValueError(f"warm start {kind!r} does not chain tiles; those that do: {', '.join(CHAINED)}")


def serpentine(boxes: Sequence[tuple[int, int, int, int]]) -> list[int]:
    """The indices of ``boxes`` (top, left, h, w; row by row, as ``tile_boxes`` gives them) row by
    row, every other row right to left: each box after the first is adjacent to the one before."""
    rows: dict[int, list[int]] = {}
    for k, (top, _left, _, _) in enumerate(boxes):
        rows.setdefault(top, []).append(k)
    order: list[int] = []
    for r, top in enumerate(sorted(rows)):
        row = sorted(rows[top], key=lambda k: boxes[k][1])
        order.extend(row if r % 2 == 0 else row[::-1])
    return order


def save_initial(weights: dict[int, dict[str, Tensor]], about: dict) -> bytes:
    """Initial weights per channel count (``{3: weights_of(...)}``) and what they are for (``about``:
    preset, input_seed (the seed of the input they were learned with), collection, images) as the
    bytes of one ``torch.save`` file."""
    buffer = io.BytesIO()
    torch.save({"weights": {int(c): w for c, w in weights.items()}, "about": about}, buffer)
    return buffer.getvalue()


def load_initial(data: bytes, *, preset: str, channels: int, name: str = "warm start") -> Start:
    """The ``Start`` stored by ``save_initial`` for ``channels``; ValueError naming ``name`` when it
    was learned for another preset or has no weights for that channel count."""
    try:
        stored = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        weights, about = stored["weights"], stored["about"]
    except Exception as error:  # noqa: BLE001  (any unreadable file is the same bad input)
        raise ValueError(f"{name} is not a dip warm-start file: {type(error).__name__}: {error}") from None
    if about.get("preset") != preset:
        raise ValueError(f"{name} was learned for preset {about.get('preset')!r}, not {preset!r}")
    if channels not in weights:
        raise ValueError(f"{name} has weights for {sorted(weights)} channel(s), not for this image's {channels}")
    return Start(weights[channels], input_seed=about.get("input_seed"))


def collection_start(options, channels: int) -> Start:
    """The weights a "collection" warm start of ``options`` (``Options``) reads from
    ``options.warm_weights`` (a local file) for an image of ``channels`` channels."""
    from pathlib import Path

    if not options.warm_weights:
        raise ValueError("warm start 'collection' needs its weights: --warm-weights FILE (dip run learns and "
                         "passes them for a manifest's collection)")
    path = Path(options.warm_weights)
    if not path.is_file():
        raise ValueError(f"warm weights {options.warm_weights!r}: no such file")
    return load_initial(path.read_bytes(), preset=options.resolve().name, channels=channels,
                        name=f"warm weights {options.warm_weights!r}")

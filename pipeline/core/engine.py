"""How the fit runs on the device: memory format, precision, compilation, optimizer kernel.

``EngineConfig`` changes how fast one iteration runs, never what it computes (up to rounding):
``plain()`` is the reference code's fp32 eager loop, ``fast(device)`` the defaults ``fit`` uses.
The helpers below are the pieces ``pipeline.core.fit.fit_many`` calls; the loop, and the loss it
minimises, stay there.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class EngineConfig:
    """How the iterations run on the device; never what they compute (up to rounding)."""

    autocast_bf16: bool = False  # forward + operator under torch.autocast(bfloat16); weights and loss stay fp32
    channels_last: bool = False  # net and input in channels_last memory format
    compile: bool = False  # torch.compile the forward + loss; eager (with one warning) where that fails
    cuda_graphs: bool = False  # compiled forward and backward replayed as CUDA graphs (mode="reduce-overhead")
    fused_adam: bool = False  # torch.optim.Adam(fused=True) on CUDA; the default Adam elsewhere
    cudnn_benchmark: bool = False  # torch.backends.cudnn.benchmark during the fit (CUDA only; restored after)
    align_channels: int = 1  # pad convolutions' input channels with zeros to a multiple of this (8: tensor cores)
    host_sync_every_iteration: bool = False  # loss.item() every iteration, as the reference code does

    @classmethod
    def plain(cls) -> "EngineConfig":
        """The reference code's loop: fp32, eager, default Adam, a host sync every iteration."""
        return cls(host_sync_every_iteration=True)

    @classmethod
    def fast(cls, device: str | torch.device) -> "EngineConfig":
        """What ``fit`` uses by default on ``device``.

        CUDA: everything on. The CPU: everything off (measured on 2 shared cores, torch 2.13: bf16
        autocast made the paper's net 60x slower, channels_last was no faster, torch.compile took
        minutes to start; see docs/experiments/fit-engine.md); only the per-iteration host sync is dropped.
        """
        if torch.device(device).type == "cuda":
            return cls(autocast_bf16=True, channels_last=True, compile=True, cuda_graphs=True, fused_adam=True,
                       cudnn_benchmark=True)
        return cls()

    def without(self, *names: str) -> "EngineConfig":
        """This engine with the named options off (``cuda_graphs`` goes with ``compile``)."""
        off = dict.fromkeys(names, False)
        if "compile" in names:
            off["cuda_graphs"] = False
        return replace(self, **off)


def check_engine(engine: EngineConfig, dtype: torch.dtype) -> None:
    """ValueError naming the setting when ``engine`` cannot run with ``dtype``."""
    if not isinstance(engine, EngineConfig):
        raise ValueError(f"engine must be an EngineConfig or None, got {engine!r}")
    if engine.autocast_bf16 and dtype != torch.float32:
        raise ValueError(f"autocast_bf16 needs dtype torch.float32, got {dtype}; pass engine=EngineConfig.plain()")
    if engine.cuda_graphs and not engine.compile:
        raise ValueError("cuda_graphs needs compile=True (the graphs are torch.compile's reduce-overhead mode)")
    if not isinstance(engine.align_channels, int) or engine.align_channels < 1:
        raise ValueError(f"align_channels must be an int >= 1, got {engine.align_channels!r}")


def drop_running_stats(net: nn.Module) -> nn.Module:
    """BatchNorm without running statistics. A DIP net always runs in training mode (batch
    statistics), so the running averages are never read; dropping them removes a buffer update
    per layer and lets the compiled step be captured as a CUDA graph (no mutated inputs)."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None
    return net


class ChannelPaddedConv2d(nn.Module):
    """A Conv2d whose input gets zero channels appended up to ``in_channels`` (a multiple of 8, say):
    the same function, with its weight padded by zeros. The padded weights see only zero inputs,
    so their gradient is exactly 0 and Adam leaves them at 0: the fit is the unpadded one's."""

    def __init__(self, conv: nn.Conv2d, in_channels: int):
        super().__init__()
        extra = in_channels - conv.in_channels
        self.extra, self.stride, self.padding, self.dilation = extra, conv.stride, conv.padding, conv.dilation
        weight = conv.weight.detach()  # [out, in, k, k] -> [out, in + extra, k, k]
        self.weight = nn.Parameter(F.pad(weight, (0, 0, 0, 0, 0, extra)).contiguous())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:  # [N, in, H, W] -> [N, out, H', W']
        x = F.pad(x, (0, 0, 0, 0, 0, self.extra))  # [N, in + extra, H, W], the new channels 0
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


def align_channels(net: nn.Module, multiple: int) -> nn.Module:
    """Replace (in place) every ungrouped, zero-padded Conv2d whose input channel count is not a
    multiple of ``multiple`` by a ``ChannelPaddedConv2d``: the paper's merge convolutions see
    128 + 4 = 132 channels, which tensor-core kernels take only at a multiple of 8."""
    if multiple <= 1:
        return net
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if (isinstance(child, nn.Conv2d) and child.in_channels % multiple and child.groups == 1
                    and child.padding_mode == "zeros"):
                padded = -(-child.in_channels // multiple) * multiple
                setattr(parent, name, ChannelPaddedConv2d(child, padded))
    return net


def begin_step(engine: EngineConfig) -> None:
    """Tell the CUDA-graph runtime that a new iteration starts (its outputs may be overwritten)."""
    if engine.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()


def to_memory_format(net: nn.Module, z: Tensor, engine: EngineConfig) -> tuple[nn.Module, Tensor]:
    """The net and its input z [N, Cz, H, W] in channels_last when the engine says so."""
    if not engine.channels_last:
        return net, z
    with torch.no_grad():  # 4-D weights only: a packed net's stacked [N, ...] weights stay as they are
        for p in net.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    return net, z.contiguous(memory_format=torch.channels_last)


def make_optimizer(net: nn.Module, lr: float, engine: EngineConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam over the net's parameters (fused on CUDA when the engine says so)."""
    if engine.fused_adam and device.type == "cuda":
        return torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    return torch.optim.Adam(net.parameters(), lr=lr)


@contextlib.contextmanager
def cudnn_benchmark(engine: EngineConfig, device: torch.device) -> Iterator[None]:
    """torch.backends.cudnn.benchmark on for the block (CUDA with the option on), then as before."""
    if not (engine.cudnn_benchmark and device.type == "cuda"):
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextlib.contextmanager
def autocast(engine: EngineConfig, device: torch.device) -> Iterator[None]:
    """bf16 autocast over the block when the engine says so (weights and the loss stay fp32)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=engine.autocast_bf16):
        yield


def compile_step(step: Callable[[Tensor], tuple[Tensor, Tensor]], net: nn.Module, z: Tensor,
                 engine: EngineConfig) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``step(z_i) -> (x, loss)`` (the fit loop's forward and loss) compiled, and replayed as CUDA
    graphs, when the engine says so and a trial forward + backward on ``z`` compiles; else ``step``
    itself, with one warning naming the error. The trial leaves no trace: the gradients are not
    accumulated and any buffer it changed is put back (``fit_many`` drops BatchNorm's running
    statistics first, so a DIP net has none).
    """
    if not engine.compile:
        return step
    buffers = {name: b.detach().clone() for name, b in net.named_buffers()}
    try:
        # dynamic=False: a static graph per image size. Left to itself torch recompiles the second
        # size with dynamic shapes, and those fits ran 5-10x slower on an H200 (2026-12-04).
        compiled = torch.compile(step, mode="reduce-overhead" if engine.cuda_graphs else None, dynamic=False)
        begin_step(engine)
        _, loss = compiled(z)
        torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad])  # compiles the backward
    except Exception as error:  # noqa: BLE001  (any compiler failure: fall back, and say so)
        warnings.warn(f"torch.compile failed, the fit runs eager: {type(error).__name__}: {error}",
                      RuntimeWarning, stacklevel=3)
        compiled = step
    finally:
        with torch.no_grad():
            for name, b in net.named_buffers():
                b.copy_(buffers[name])
    return compiled

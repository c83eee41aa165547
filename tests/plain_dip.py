"""A plain fp32 Deep Image Prior, written from the paper and the authors' public code
(DmitryUlyanov/deep-image-prior): test code, the reference ``tests/core/test_operators.py`` checks our
Lanczos-2 operator against and ``benchmarks.parity`` measures our core against.

It imports torch only, nothing of ``pipeline``: its own skip network, its own Lanczos-2 downsampler
and its own fit loop, each the way the authors' notebooks do it, not the way ``pipeline.core`` does:

- ``SkipNet``: the paper's encoder-decoder (models/skip.py): per scale a stride-2 conv, a conv, the
  deeper scales, an upsampling; a 1x1 skip conv; concatenation, BatchNorm, a conv and a 1x1 conv;
  every conv with reflection padding, BatchNorm and LeakyReLU(0.2); a 1x1 conv and a sigmoid at the end.
  The image must be a multiple of 2^scales (the authors crop it so); no input grid, no output crop.
- ``lanczos2_downsampler``: models/downsampler.py's Downsampler(kernel_type='lanczos2', phase=0.5,
  preserve_size=True), loop by loop.
- ``plain_fit``: Adam on the MSE of A(f(z + jitter)) against y; the output moving average; the
  notebooks' backtracking (every iteration off the report cadence: a drop of the observation PSNR by
  more than 5 dB reloads the last parameters, which are saved at every good iteration; the optimizer
  state is kept, as theirs is, but the step is skipped where theirs steps with a zeroed loss).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def lanczos2_downsampler(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The authors' Downsampler(kernel_type='lanczos2', phase=0.5, preserve_size=True): kernel_width
    4f + 1, a (4f) x (4f) kernel for phase 1/2, support 2, normalised; ReplicationPad2d((4f - f) / 2);
    a strided convolution per channel. [N, C, H, W] -> [N, C, H / f, W / f]."""
    kernel_width = 4 * factor + 1
    size = kernel_width - 1  # phase 0.5
    kernel = torch.zeros(size, size, dtype=torch.float64)
    center = (kernel_width + 1) / 2.0
    for i in range(1, size + 1):
        for j in range(1, size + 1):
            di, dj = abs(i + 0.5 - center) / factor, abs(j + 0.5 - center) / factor
            val = 1.0
            if di != 0:
                val *= 2 * math.sin(math.pi * di) * math.sin(math.pi * di / 2) / (math.pi**2 * di * di)
            if dj != 0:
                val *= 2 * math.sin(math.pi * dj) * math.sin(math.pi * dj / 2) / (math.pi**2 * dj * dj)
            kernel[i - 1, j - 1] = val
    kernel /= kernel.sum()
    pad = (size - factor) // 2
    padded = nn.ReplicationPad2d(pad)(x)
    weight = kernel.to(x.dtype).expand(x.shape[1], 1, size, size)
    return nn.functional.conv2d(padded, weight, stride=factor, groups=x.shape[1])


def _block(c_in: int, c_out: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.ReflectionPad2d((k - 1) // 2), nn.Conv2d(c_in, c_out, k, stride=stride),
            nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)]


class _Scale(nn.Module):
    def __init__(self, c_in: int, down: list[int], up: list[int], skip: list[int], upsample: str):
        super().__init__()
        last = len(down) == 1
        self.skip = nn.Sequential(*_block(c_in, skip[0], 1)) if skip[0] else None
        deeper = [*_block(c_in, down[0], 3, stride=2), *_block(down[0], down[0], 3)]
        if not last:
            deeper.append(_Scale(down[0], down[1:], up[1:], skip[1:], upsample))
        deeper.append(nn.Upsample(scale_factor=2, mode=upsample))
        self.deeper = nn.Sequential(*deeper)
        width = skip[0] + (down[0] if last else up[1])
        self.merge = nn.Sequential(nn.BatchNorm2d(width), *_block(width, up[0], 3), *_block(up[0], up[0], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.deeper(x)
        return self.merge(deep if self.skip is None else torch.cat([self.skip(x), deep], dim=1))


class SkipNet(nn.Module):
    """The paper's skip network: [1, c_in, H, W] -> [1, c_out, H, W] in (0, 1)."""

    def __init__(self, c_in: int, c_out: int, down, up, skip, upsample: str = "bilinear"):
        super().__init__()
        self.body = _Scale(c_in, list(down), list(up), list(skip), upsample)
        self.head = nn.Sequential(nn.Conv2d(up[0], c_out, 1), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1 / max(float((a - b).square().mean()), 1e-12))


def plain_fit(y: torch.Tensor, forward, out_size: tuple[int, int], *, down, up, skip, upsample: str,
              lr: float, iterations: int, reg_noise_std: float, ema: float | None, backtrack: bool,
              seed: int, input_channels: int = 32) -> torch.Tensor:
    """Fit a fresh SkipNet so that forward(net(z)) matches y; returns the last output (or its moving
    average with ``ema``), [1, C, H, W] in [0, 1]. ``forward`` is A: identity, a mask product or the
    downsampler. The seed draws the weights, z ~ U(0, 0.1) and the jitter."""
    torch.manual_seed(seed)
    height, width = out_size
    net = SkipNet(input_channels, y.shape[1], down, up, skip, upsample)
    z = torch.rand(1, input_channels, height, width) * 0.1
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    average, saved, last_psnr = None, [p.detach().clone() for p in net.parameters()], None
    out = None
    for i in range(1, iterations + 1):
        z_i = z + torch.randn_like(z) * reg_noise_std if reg_noise_std > 0 else z
        out = net(z_i)
        loss = (forward(out) - y).square().mean()
        with torch.no_grad():
            if ema is not None:
                average = out.detach().clone() if average is None else average * ema + out.detach() * (1 - ema)
            if backtrack and i % 100:
                now = _psnr(forward(out), y)
                if last_psnr is not None and now - last_psnr < -5:
                    for param, kept in zip(net.parameters(), saved, strict=True):
                        param.copy_(kept)
                    continue
                saved, last_psnr = [p.detach().clone() for p in net.parameters()], now
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = average if average is not None else out.detach()
    return final.clamp(0, 1)

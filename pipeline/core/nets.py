"""Generator networks for Deep Image Prior: x = f_theta(z) maps a fixed random input z to an image.

The networks of Ulyanov, Vedaldi & Lempitsky (CVPR 2018, supplementary material):

- "skip":   encoder-decoder with a thin skip connection at every scale (the paper's default);
            with channels_skip all 0 it is the "hourglass" net.
- "unet":   a plain UNet: full-width encoder features are concatenated into the decoder.
- "resnet": residual blocks at full resolution, no downsampling.

A net takes z: [N, in_channels, H, W] with (H, W) = grid_size(h, w, cfg.depth, cfg.min_deepest)
and returns [N, out_channels, H, W], in [0, 1] when need_sigmoid. Make z at the grid size, run
the net, then crop_center the output back to h x w: the padding lives only in the random input,
no pixel of the real image is ever cropped away.
"""

import math

import torch
from torch import nn

from .config import INPUT_KINDS, NET_VARIANTS, NetConfig, skip_config  # noqa: F401  (re-exported: the configs live in config.py, torch-free)

# -----------------------------------------------------------------------------
# layers


def _conv(c_in: int, c_out: int, k: int, pad: str, downsample: str | None = None) -> list[nn.Module]:
    """k x k conv keeping H, W; with downsample ("stride" | "avg" | "max") it halves H and W."""
    p = (k - 1) // 2
    layers: list[nn.Module] = []
    if pad == "reflection" and p > 0:
        layers.append(nn.ReflectionPad2d(p))
        p = 0
    layers.append(nn.Conv2d(c_in, c_out, k, stride=2 if downsample == "stride" else 1, padding=p))
    if downsample == "avg":
        layers.append(nn.AvgPool2d(2))
    elif downsample == "max":
        layers.append(nn.MaxPool2d(2))
    return layers


def _conv_bn_act(c_in: int, c_out: int, k: int, pad: str, downsample: str | None = None) -> list[nn.Module]:
    return [*_conv(c_in, c_out, k, pad, downsample), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]


def _upsample(mode: str) -> nn.Module:
    return nn.Upsample(scale_factor=2, mode=mode, align_corners=False if mode == "bilinear" else None)


class _SkipScale(nn.Module):
    """Scale i of the skip net: [N, c_in, H, W] -> [N, channels_up[i], H, W]; scale i+1 runs at H/2."""

    def __init__(self, cfg: NetConfig, i: int, c_in: int):
        super().__init__()
        down, up, skip = cfg.channels_down[i], cfg.channels_up[i], cfg.channels_skip[i]
        last = i == cfg.depth - 1
        self.skip = nn.Sequential(*_conv_bn_act(c_in, skip, cfg.filter_size_skip, cfg.pad)) if skip else None
        self.deep = nn.Sequential(
            *_conv_bn_act(c_in, down, cfg.filter_size_down, cfg.pad, cfg.downsample_mode),  # (N, down, H/2, W/2)
            *_conv_bn_act(down, down, cfg.filter_size_down, cfg.pad),
            *([] if last else [_SkipScale(cfg, i + 1, down)]),  # (N, k, H/2, W/2)
            _upsample(cfg.upsample_mode),  # (N, k, H, W)
        )
        k = down if last else cfg.channels_up[i + 1]
        self.merge = nn.Sequential(
            nn.BatchNorm2d(skip + k),
            *_conv_bn_act(skip + k, up, cfg.filter_size_up, cfg.pad),
            *(_conv_bn_act(up, up, 1, cfg.pad) if cfg.need_1x1_up else []),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.deep(x)  # (N, k, H, W)
        if self.skip is not None:
            y = torch.cat([self.skip(x), y], dim=1)  # (N, skip + k, H, W)
        return self.merge(y)  # (N, up, H, W)


class _UNet(nn.Module):
    """Plain UNet: [N, in_channels, H, W] -> [N, channels_up[0], H, W]; bottleneck at H / 2**depth."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        d, u, fd, fu, pad = cfg.channels_down, cfg.channels_up, cfg.filter_size_down, cfg.filter_size_up, cfg.pad
        c_in = (cfg.in_channels, *d[:-1])
        self.encoders = nn.ModuleList(  # encoder i runs at H / 2**i
            nn.Sequential(*_conv_bn_act(c_in[i], d[i], fd, pad, cfg.downsample_mode if i else None),
                          *_conv_bn_act(d[i], d[i], fd, pad))
            for i in range(cfg.depth))
        self.bottom = nn.Sequential(*_conv_bn_act(d[-1], d[-1], fd, pad, cfg.downsample_mode),
                                    *_conv_bn_act(d[-1], d[-1], fd, pad))
        self.upsample = _upsample(cfg.upsample_mode)
        c_deeper = (*u[1:], d[-1])
        self.decoders = nn.ModuleList(  # decoder i runs at H / 2**i
            nn.Sequential(*_conv_bn_act(d[i] + c_deeper[i], u[i], fu, pad), *_conv_bn_act(u[i], u[i], fu, pad))
            for i in range(cfg.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = []
        for encoder in self.encoders:
            x = encoder(x)  # (N, down[i], H/2**i, W/2**i)
            features.append(x)
        x = self.bottom(x)  # (N, down[-1], H/2**depth, W/2**depth)
        for i in reversed(range(len(self.decoders))):
            x = self.decoders[i](torch.cat([features[i], self.upsample(x)], dim=1))  # (N, up[i], H/2**i, W/2**i)
        return x


class _Residual(nn.Module):
    def __init__(self, c: int, pad: str):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_act(c, c, 3, pad), *_conv(c, c, 3, pad), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DIPNet(nn.Module):
    """A DIP generator built from a NetConfig; checks its input size against the config."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.kind == "skip":
            self.body, width, k = _SkipScale(cfg, 0, cfg.in_channels), cfg.channels_up[0], 1
        elif cfg.kind == "unet":
            self.body, width, k = _UNet(cfg), cfg.channels_up[0], 1
        else:
            c = cfg.resnet_channels
            self.body = nn.Sequential(*_conv(cfg.in_channels, c, 3, cfg.pad), nn.LeakyReLU(0.2),
                                      *[_Residual(c, cfg.pad) for _ in range(cfg.resnet_blocks)],
                                      *_conv(c, c, 3, cfg.pad), nn.BatchNorm2d(c))
            width, k = c, 3
        self.head = nn.Sequential(*_conv(width, cfg.out_channels, k, cfg.pad),
                                  *([nn.Sigmoid()] if cfg.need_sigmoid else []))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: [N, in_channels, H, W] on the grid -> [N, out_channels, H, W], in [0, 1] with need_sigmoid."""
        cfg = self.cfg
        if z.ndim != 4 or z.shape[1] != cfg.in_channels:
            raise ValueError(f"net input must be [N, {cfg.in_channels}, H, W], got {list(z.shape)}")
        h, w = z.shape[-2:]
        gh, gw = grid_size(h, w, cfg.depth, cfg.min_deepest)
        if (gh, gw) != (h, w):
            raise ValueError(f"net input size {h}x{w} does not fit a depth-{cfg.depth} {cfg.kind} net: make the "
                             f"input at grid_size(...) = {gh}x{gw} and crop_center the output")
        return self.head(self.body(z))


# -----------------------------------------------------------------------------
# public helpers


def build_net(cfg: NetConfig) -> nn.Module:
    """The network for cfg, freshly initialised (seed torch beforehand for reproducible weights)."""
    return DIPNet(cfg)


def count_parameters(net: nn.Module) -> int:
    """Number of scalar parameters (weights and biases, BatchNorm affine included)."""
    return sum(p.numel() for p in net.parameters())


def grid_size(height: int, width: int, depth: int, min_deepest: int = 2) -> tuple[int, int]:
    """Smallest (H, W) >= (height, width) a depth-`depth` net accepts, in px.

    Each side is a multiple of 2**depth and at least min_deepest * 2**depth, so the deepest
    feature map is at least min_deepest px wide (see NetConfig.min_deepest).
    """
    for name, value, lowest in (("height", height, 1), ("width", width, 1),
                                ("depth", depth, 0), ("min_deepest", min_deepest, 1)):
        if not isinstance(value, int) or value < lowest:
            raise ValueError(f"grid_size: {name} must be an int >= {lowest}, got {value!r}")
    step = 2 ** depth
    return step * max(math.ceil(height / step), min_deepest), step * max(math.ceil(width / step), min_deepest)


def crop_center(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre crop [N, C, H', W'] -> [N, C, height, width]; the inverse of running on a larger grid."""
    if x.ndim != 4:
        raise ValueError(f"crop_center expects [N, C, H, W], got shape {list(x.shape)}")
    h, w = x.shape[-2:]
    if not (1 <= height <= h and 1 <= width <= w):
        raise ValueError(f"cannot crop {height}x{width} out of a {h}x{w} tensor")
    top, left = (h - height) // 2, (w - width) // 2
    return x[:, :, top:top + height, left:left + width]


def make_input(kind: str, channels: int, height: int, width: int, generator: torch.Generator,
               scale: float = 0.1) -> torch.Tensor:
    """The fixed network input z: [1, channels, height, width], float32 on the CPU.

    "noise":    U(0, 1) * scale, drawn from `generator` (the paper: 32 channels, scale 0.1).
    "meshgrid": 2 channels, x then y coordinates, each in [0, 1] (0 at the top-left pixel, 1 at
                the bottom-right); deterministic, ignores generator and scale.
    """
    if kind not in INPUT_KINDS:
        raise ValueError(f"make_input: kind must be one of {INPUT_KINDS}, got {kind!r}")
    for name, value in (("channels", channels), ("height", height), ("width", width)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"make_input: {name} must be a positive int, got {value!r}")
    if kind == "meshgrid":
        if channels != 2:
            raise ValueError(f"make_input: meshgrid input has 2 channels (x, y), got channels={channels}")
        y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
        return torch.stack([x, y])[None]  # (1, 2, H, W)
    if generator.device.type != "cpu":
        raise ValueError(f"make_input: generator must be a CPU generator, got device {generator.device}")
    if not scale > 0:
        raise ValueError(f"make_input: scale must be > 0, got {scale!r}")
    return torch.rand((1, channels, height, width), generator=generator) * scale  # (1, C, H, W) in [0, scale)

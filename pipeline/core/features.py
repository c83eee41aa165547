"""CNN activations for feature inversion: AlexNet, VGG-16 and VGG-19, built here layer for
layer as torchvision builds them, so torchvision's pretrained state dicts load as they are
(keys `features.0.weight`, `classifier.1.weight`, ...). Nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Layer specs in torchvision's order (the list index is the torchvision module index):
# ("conv", in, out, kernel, stride, padding), ("relu",), ("maxpool", kernel, stride),
# ("dropout",), ("linear", in, out).


def _vgg_features(config: list[int | str]) -> list[tuple]:
    """torchvision's `vgg.make_layers` without batch norm: 3x3 convs, 2x2 max pools."""
    layers, channels = [], 3
    for item in config:
        if item == "M":
            layers.append(("maxpool", 2, 2))
        else:
            layers += [("conv", channels, item, 3, 1, 1), ("relu",)]
            channels = item
    return layers


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]  # fmt: skip
_VGG_CLASSIFIER = [
    ("linear", 512 * 7 * 7, 4096), ("relu",), ("dropout",),
    ("linear", 4096, 4096), ("relu",), ("dropout",), ("linear", 4096, 1000),
]  # fmt: skip

ARCHITECTURES: dict[str, dict] = {
    "alexnet": dict(
        features=[
            ("conv", 3, 64, 11, 4, 2), ("relu",), ("maxpool", 3, 2),
            ("conv", 64, 192, 5, 1, 2), ("relu",), ("maxpool", 3, 2),
            ("conv", 192, 384, 3, 1, 1), ("relu",),
            ("conv", 384, 256, 3, 1, 1), ("relu",),
            ("conv", 256, 256, 3, 1, 1), ("relu",), ("maxpool", 3, 2),
        ],
        avgpool=6,  # AdaptiveAvgPool2d((6, 6)): fc layers accept any input >= 63 px
        classifier=[
            ("dropout",), ("linear", 256 * 6 * 6, 4096), ("relu",),
            ("dropout",), ("linear", 4096, 4096), ("relu",), ("linear", 4096, 1000),
        ],
        names_by_block=False,  # conv1..conv5, pool1, pool2, pool5
        weight_files=("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth"),
    ),
    "vgg16": dict(
        features=_vgg_features(_VGG16), avgpool=7, classifier=_VGG_CLASSIFIER,
        names_by_block=True, weight_files=("vgg16-397923af.pth",),
    ),
    "vgg19": dict(
        features=_vgg_features(_VGG19), avgpool=7, classifier=_VGG_CLASSIFIER,
        names_by_block=True, weight_files=("vgg19-dcbb9e9d.pth",),
    ),
}  # fmt: skip


def layer_names(arch: str) -> dict[str, tuple[str, int]]:
    """Friendly layer name -> (part, torchvision index), part "features" or "classifier".

    AlexNet: conv1..conv5, relu1..relu5, pool1, pool2, pool5; VGG: conv1_1.., relu1_1..,
    pool1..pool5; both: fc6, relu6, fc7, relu7, fc8 (after the classifier's Linear/ReLU).
    """
    spec = _architecture(arch)
    names: dict[str, tuple[str, int]] = {}
    block, conv_in_block, conv_count = 1, 0, 0
    for index, (kind, *_) in enumerate(spec["features"]):
        if kind == "conv":
            conv_count += 1
            conv_in_block += 1
        suffix = f"{block}_{conv_in_block}" if spec["names_by_block"] else f"{conv_count}"
        if kind in ("conv", "relu"):
            names[f"{kind}{suffix}"] = ("features", index)
        elif kind == "maxpool":
            names[f"pool{block if spec['names_by_block'] else conv_count}"] = ("features", index)
            block, conv_in_block = block + 1, 0
    fc = 5
    for index, (kind, *_) in enumerate(spec["classifier"]):
        if kind == "linear":
            fc += 1
            names[f"fc{fc}"] = ("classifier", index)
        elif kind == "relu":
            names[f"relu{fc}"] = ("classifier", index)
    return names


class FeatureExtractor(nn.Module):
    """x [N, 3, H, W] RGB in [0, 1] -> activations at one layer of a truncated network:
    [N, C', H', W'] for conv/relu/pool layers, [N, 4096] (fc6, fc7) or [N, 1000] (fc8).
    ImageNet mean/std normalisation happens inside.
    """

    def __init__(self, arch: str, layer: str, features: nn.Sequential,
                 classifier: nn.Sequential | None, avgpool_size: int, min_size: int):  # fmt: skip
        super().__init__()
        self.arch, self.layer, self.min_size = arch, layer, min_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.features = features
        self.classifier = classifier
        self.avgpool = None
        if classifier is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((avgpool_size, avgpool_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.arch} expects x of shape [N, 3, H, W], got {list(x.shape)}")
        if min(x.shape[2:]) < self.min_size:
            raise ValueError(
                f"{self.arch} up to {self.layer} needs H, W >= {self.min_size}, "
                f"got {x.shape[2]}x{x.shape[3]}"
            )
        x = (x - self.mean) / self.std
        x = self.features(x)  # (N, C', H', W')
        if self.classifier is not None:
            x = torch.flatten(self.avgpool(x), 1)  # (N, C' * s * s)
            x = self.classifier(x)  # (N, 4096) or (N, 1000)
        return x


def feature_extractor(
    arch: str, layer: str, weights: str | Path | None = None, seed: int = 0
) -> FeatureExtractor:
    """An eval-mode extractor of `layer` of `arch` ("alexnet", "vgg16", "vgg19"), with
    parameters frozen (requires_grad False); gradients still flow to its input.

    weights: path to a torchvision state-dict file for `arch`; None = torchvision's cache
    (`torch.hub.get_dir()/checkpoints/<standard file name>`, FileNotFoundError when
    absent); "random" = PyTorch's default init seeded by `seed` (global RNG untouched).
    The module maps x [N, 3, H, W] RGB in [0, 1] to [N, C', H', W'] (conv/relu/pool
    layers) or [N, 4096] / [N, 1000] (fc layers); `.min_size` is the smallest H, W it takes.
    """
    spec = _architecture(arch)
    names = layer_names(arch)
    if layer not in names:
        raise ValueError(f"unknown layer {layer!r} for {arch}; valid layers: {', '.join(names)}")
    part, index = names[layer]
    feature_specs = spec["features"] if part == "classifier" else spec["features"][: index + 1]
    classifier_specs = spec["classifier"][: index + 1] if part == "classifier" else None

    random_init = isinstance(weights, str) and weights == "random"
    path = None if random_init else _weights_path(arch, weights)  # fail before building
    # Random layers draw their init from a private seed (the global RNG is left as it was);
    # layers that will be loaded are built on the meta device: no memory, no init.
    placement = contextlib.nullcontext() if random_init else torch.device("meta")
    with torch.random.fork_rng(devices=[]), placement:
        torch.manual_seed(seed)
        features = nn.Sequential(*[_build(s) for s in feature_specs])
        classifier = None
        if classifier_specs is not None:
            classifier = nn.Sequential(*[_build(s) for s in classifier_specs])
    model = FeatureExtractor(arch, layer, features, classifier, spec["avgpool"],
                             min_size=_min_input_size(feature_specs))  # fmt: skip
    if path is not None:
        _load_weights(model, arch, path)
    model.eval()
    model.requires_grad_(False)
    return model


def _architecture(arch: str) -> dict:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def _build(spec: tuple) -> nn.Module:
    kind, *args = spec
    if kind == "conv":
        in_channels, out_channels, kernel, stride, padding = args
        return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding)
    if kind == "relu":
        return nn.ReLU()  # torchvision's is inplace; same result, safer for autograd here
    if kind == "maxpool":
        return nn.MaxPool2d(kernel_size=args[0], stride=args[1])
    if kind == "dropout":
        return nn.Dropout(p=0.5)
    if kind == "linear":
        return nn.Linear(*args)
    raise ValueError(f"unknown layer kind {kind!r}")


def _min_input_size(feature_specs: list[tuple]) -> int:
    """Smallest H (= W) for which every kept feature layer still outputs >= 1 pixel."""
    needed = 1
    for kind, *args in reversed(feature_specs):
        if kind == "conv":
            kernel, stride, padding = args[2:]
            needed = max(1, (needed - 1) * stride + kernel - 2 * padding)
        elif kind == "maxpool":
            needed = (needed - 1) * args[1] + args[0]
    return needed


def _weights_path(arch: str, weights: str | Path | None) -> Path:
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{arch} weights file not found: {path}")
        return path
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    tried = [cache / name for name in ARCHITECTURES[arch]["weight_files"]]
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no {arch} weights in torchvision's cache; tried {', '.join(map(str, tried))}. "
        "Nothing is downloaded: pass weights=<path to the .pth file> or copy it there."
    )


def _load_weights(model: FeatureExtractor, arch: str, path: Path) -> None:
    """Load the keys of the kept layers from a torchvision state dict (strict)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    wanted = list(model.state_dict())
    missing = [key for key in wanted if key not in state]
    if missing:
        raise ValueError(f"{path}: not a torchvision {arch} state dict, missing keys {missing}")
    try:
        model.load_state_dict({key: state[key] for key in wanted}, strict=True, assign=True)
    except RuntimeError as exc:  # shape mismatch, e.g. weights of another architecture
        raise ValueError(f"{path}: weights do not fit {arch}: {exc}") from exc

"""What the benchmarks share: the device's name, crops, the suites' images, and writing results.

Every benchmark writes ``benchmarks/results/<benchmark>/<device>.json`` through ``write_results``,
with one schema:

    benchmark           the results folder's name: the script's, plus the settings that make it a
                        different measurement where one script makes several (``stop_rules-denoise-64``)
    device              the file's name: ``cpu``, ``nvidia-h200`` (``device_name``)
    device_description  what the device was: ``cpu (2 cores, AMD EPYC)``, ``NVIDIA H200 (139.8 GiB)``
    torch               torch.__version__
    commit              ``git rev-parse HEAD``, with ``-dirty`` when tracked files had uncommitted changes
    date                when the file was written, ISO 8601 UTC
    command             the command line as run
    results             the benchmark's own figures

A device's file holds the latest run; git keeps the earlier ones. ``benchmarks.tables`` turns the
files into ``docs/benchmarks.md``.

The DIP core and the suites' lists only (no Ray, fsspec or Click): the GPU machines have torch,
numpy, Pillow and scikit-image, nothing more. Importing this module imports none of them either
(each function imports what it needs): ``benchmarks.scan_memory`` measures its children's peak
memory, which starts from its own.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.evaluation.suites import DEFAULT_DATA  # the standard library only

if TYPE_CHECKING:
    import torch

    from pipeline.core.images import Picture

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = DEFAULT_DATA  # ../shared/data, laid out as its README says
SCHEMA = ("benchmark", "device", "device_description", "torch", "commit", "date", "command", "results")
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")


# --- the device ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """A device as the results name it: ``slug`` is the file name, ``description`` says what it was."""

    slug: str
    description: str


def slug(text: str) -> str:
    """Lower case, runs of anything but letters and digits as one hyphen: "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def device_name(device: str | torch.device) -> Device:
    """The results' name of ``device`` ("cpu", "cuda", "cuda:1", "meta").

    cpu: "cpu", described as "cpu (2 cores, AMD EPYC)"; cuda: the GPU's name slugged ("nvidia-h200"),
    described by its name and memory; meta: shapes only, nothing computed. Only cuda imports torch.
    """
    kind = str(device).split(":")[0]
    if kind == "cuda":
        import torch

        name = torch.cuda.get_device_name(torch.device(device))
        memory = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
        return Device(slug(name), f"{name} ({memory:.1f} GiB)")
    if kind == "cpu":
        return Device("cpu", f"cpu ({os.cpu_count()} cores, {_cpu_model()})")
    if kind == "meta":
        return Device("meta", "meta device: shapes only, nothing computed")
    raise ValueError(f"device must be cpu, cuda[:N] or meta, got {str(device)!r}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux: fall back on what platform knows
        pass
    return platform.processor() or platform.machine()


# --- images -------------------------------------------------------------------------------------


def centre_crop(picture: Picture, size: int | None, top_left: tuple[int, int] | None = None) -> Picture:
    """The ``size`` x ``size`` centre of ``picture`` (top and left rounded down), or the square at
    ``top_left`` (top, left) when given; ``size`` 0 or None: the whole picture, unchanged.

    Pixels and alpha are cut alike; the bit depth is kept. Raises ValueError when the square does
    not fit in the picture.
    """
    if not size:
        return picture
    top, left = top_left or ((picture.height - size) // 2, (picture.width - size) // 2)
    if size < 0 or top < 0 or left < 0 or top + size > picture.height or left + size > picture.width:
        raise ValueError(f"a {size}x{size} crop at (top {top}, left {left}) does not fit in a "
                         f"{picture.width}x{picture.height} picture")
    from pipeline.core.images import Picture

    def cut(x: torch.Tensor) -> torch.Tensor:
        return x[..., top:top + size, left:left + size].contiguous()  # [1, C, size, size]

    alpha = None if picture.alpha is None else cut(picture.alpha)
    return Picture(pixels=cut(picture.pixels), alpha=alpha, bit_depth=picture.bit_depth)


def centre_square(picture: Picture, size: int) -> Picture:
    """The largest centred square of ``picture``, resized to ``size`` x ``size`` (Pillow LANCZOS on
    8-bit values) where it is another size. RGB or grey; alpha left out."""
    import numpy as np
    import torch
    from PIL import Image

    from pipeline.core.images import Picture

    square = centre_crop(Picture(pixels=picture.pixels, bit_depth=picture.bit_depth),
                         min(picture.height, picture.width))
    if square.height == size:
        return square
    array = np.rint(square.pixels[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # (H, W, C)
    image = Image.fromarray(array[..., 0] if square.channels == 1 else array)
    resized = np.asarray(image.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255
    pixels = torch.from_numpy(resized.reshape(size, size, square.channels)).permute(2, 0, 1)[None]
    return Picture(pixels=pixels.contiguous(), bit_depth=8)


def rgb(picture: Picture) -> Picture:
    """A grey picture as RGB (its plane three times); an RGB one unchanged."""
    if picture.channels == 3:
        return picture
    from pipeline.core.images import Picture

    return Picture(pixels=picture.pixels.repeat(1, 3, 1, 1), alpha=picture.alpha, bit_depth=picture.bit_depth)


# --- the suites' images (../shared/data) ----------------------------------------------------------


def denoise_color_file(name: str, kind: str = "GT", data: str | Path = DATA) -> Path:
    """A file of the colour denoising suite: ``kind`` GT, noisy (the authors' sigma-25 input),
    deep_prior (their DIP output) or bm3d (CBM3D's)."""
    return Path(data) / "denoise_color_sigma25" / f"{name}_{kind}.png"


def set5_file(name: str, kind: str = "GT", data: str | Path = DATA) -> Path:
    """A file of Set5 x4: ``kind`` GT, bicubic or deep_prior (the authors' outputs)."""
    return Path(data) / "set5_x4" / f"{name}_{kind}.png"


def denoise_color(name: str, kind: str = "GT", data: str | Path = DATA) -> Picture:
    """``denoise_color_file`` read: [1, 3, H, W] in [0, 1]."""
    from pipeline.core.images import read

    return read(denoise_color_file(name, kind, data))


def sample(path: str, data: str | Path = DATA) -> Picture:
    """Any image under ``data`` by its relative path ("samples/restoration/barbara.png"), read."""
    from pipeline.core.images import read

    return read(Path(data) / path)


# --- results ------------------------------------------------------------------------------------


@functools.cache
def git_commit() -> str:
    """``git rev-parse HEAD`` of this checkout, with ``-dirty`` when tracked files differ from it
    (``benchmarks/results`` left out: the run's own output). Read once per process.

    Where the tree is not a git checkout (a copy on a lent GPU machine), ``DIP_COMMIT`` names the
    commit it was copied from; without it, "unknown".
    """
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                 ":(exclude)benchmarks/results"], cwd=ROOT, capture_output=True, text=True,
                                check=True)
    except (OSError, subprocess.CalledProcessError):  # no git, or not a checkout
        commit = os.environ.get("DIP_COMMIT", "unknown")
        print(f"not a git checkout: commit {commit} (from DIP_COMMIT)", file=sys.stderr)
        return commit
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def command_line() -> str:
    """The command as run: ``python -m benchmarks.fit_speed --size 64``."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = f"python -m {spec.name}" if spec is not None else f"python {sys.argv[0]}"
    return " ".join([program, *map(shlex.quote, sys.argv[1:])])


def torch_version() -> str:
    """The torch this process runs (imported or not: scan_memory's parent does not import it)."""
    return sys.modules["torch"].__version__ if "torch" in sys.modules else version("torch")


def write_results(benchmark: str, device: str | torch.device | Device, results: dict | list,
                  command: str | None = None, root: str | Path = RESULTS) -> Path:
    """Write ``<root>/<benchmark>/<device slug>.json`` (replacing it whole: a killed run leaves the
    last complete file) with the schema above; ``results`` is the benchmark's payload (JSON types).
    ``command`` defaults to the command line of this process. Returns the path."""
    if not NAME.fullmatch(benchmark):
        raise ValueError(f"benchmark must be lower case letters, digits, '_', '-' or '.', got {benchmark!r}")
    device = device if isinstance(device, Device) else device_name(device)
    record = {"benchmark": benchmark, "device": device.slug, "device_description": device.description,
              "torch": torch_version(), "commit": git_commit(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": command or command_line(), "results": results}
    path = Path(root) / benchmark / f"{device.slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    partial.replace(path)
    return path


def read_results(path: str | Path) -> dict:
    """A results file, its schema checked (ValueError names the missing keys)."""
    record = json.loads(Path(path).read_text())
    missing = [key for key in SCHEMA if key not in record]
    if missing:
        raise ValueError(f"{path}: not a results file, missing {', '.join(missing)}")
    return record

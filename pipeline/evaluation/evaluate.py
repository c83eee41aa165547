"""Evaluation suites (``pipeline.evaluation.suites``) as batch manifests.

``dip evaluate SUITE`` builds the manifest here, writes it to
``<output>/evaluation_manifest.parquet`` and runs it through the same batch job as ``dip run``;
``dip report`` reads the results back. Every row carries extra columns: ``crop`` (the ``--crop``
size, or null), ``suite``, ``subset`` (archive-synthetic: ``defects`` or ``clean``) and ``paper_psnr`` (the paper's DIP
figure for the suite, where it gives one), which the batch job carries into the results table.
denoise-color-25 rows also carry ``published_psnr``: the PSNR of CBM3D's published output of the
image (``<name>_bm3d.png``, cropped like the others with ``--crop``), scored when the manifest is built.

Over several seeds (``dip evaluate --seeds K``) each image is K rows, ``<id>-s1`` ... ``<id>-sK``,
with ``replicate_of`` (the image's id) and ``replicate`` (1..K): K fit seeds (derived from the run's
seed and the row's id, as every row's), one observation (a degradation's draw seeded by
``degradation_seed``, the same on the K rows). ``dip report`` shows their mean and spread.
"""

from __future__ import annotations

import io
import json
import posixpath

from .. import storage
from ..batch.manifest import derive_seed, image_ids
from ..core.formats import IMAGE_SUFFIXES
from ..core.operators import parse_degradation
from .suites import ARCHIVE_SIGMAS, ARCHIVE_TASKS, DENOISE_COLOR, INPAINT_SAMPLES, PAPER, SET5, SUITES

COLUMNS = ("image_id", "uri", "task", "degradation", "reference_uri", "mask_uri", "preset", "params", "seed",
           "degradation_seed", "suite", "subset", "paper_psnr", "published_psnr", "replicate_of", "replicate", "crop")
MAX_SEEDS = 100
MANIFEST_NAME = "evaluation_manifest.parquet"


def build_rows(suite: str, data: str, output: str, *, preset: str | None = None, limit: int | None = None,
               crop: int | None = None, degradation: str | None = None, tv_baseline: bool | None = None,
               seeds: int = 1, storage_options: dict | None = None) -> list[dict]:
    """The manifest rows of ``suite`` over the images under ``data`` (a folder or URL prefix).

    preset: replaces each row's paper preset (e.g. ``cpu-small``); limit: keep the first N
    images; crop: write N x N centre crops (N a multiple of 4) of each image, and of its mask and
    reference, under ``<output>/crops/<suite>/`` and point the rows at them; tv_baseline: also
    score the TV prior (None: on for set5-x4 only); seeds: K > 1 makes K replicate rows of each
    image (``replicates``). Raises ValueError naming a bad value, FileNotFoundError naming a missing file.
    """
    # 1. Check the arguments.
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {', '.join(SUITES)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit!r}")
    if crop is not None and (crop < 4 or crop % 4):
        raise ValueError(f"crop must be a positive multiple of 4, got {crop!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
        raise ValueError(f"seeds must be an integer from 1 to {MAX_SEEDS}, got {seeds!r}")
    if suite == "folder" and not degradation:
        raise ValueError("suite 'folder' needs a degradation (noise:25, downsample:4, mask:bernoulli:0.5, jpeg:10)")
    if suite != "folder" and degradation:
        raise ValueError(f"suite {suite!r} has its own degradation; --degradation {degradation!r} is for 'folder'")
    if degradation:
        parse_degradation(degradation)  # raises ValueError naming the bad spec

    # 2. The suite's images, with their paper presets.
    per_image = 2 * len(ARCHIVE_TASKS) if suite == "archive-synthetic" else 1  # rows of one image
    rows = _suite_rows(suite, data, degradation, storage_options)[:None if limit is None else limit * per_image]

    # 3. Crops (or a check that the originals are there), then the columns every row carries.
    paper_psnr = PAPER[suite].get("dip")
    tv = suite == "set5-x4" if tv_baseline is None else tv_baseline
    for row in rows:
        for column in ("uri", "reference_uri", "mask_uri", "published_uri"):
            url = row.get(column)
            if url is None:
                continue
            if crop is not None:
                name = posixpath.splitext(url.rstrip("/").rsplit("/", 1)[-1])[0]
                if suite == "folder":
                    name = row["image_id"]
                target = storage.under(output, "crops", suite, f"{name}.png", storage_options=storage_options)
                storage.write_bytes(target, centre_crop(storage.read_bytes(url, storage_options), crop, url),
                                    storage_options)
                row[column] = target
            elif not storage.exists(url, storage_options):
                raise FileNotFoundError(f"suite {suite!r}: {url} is missing "
                                        f"(is --data {data!r} laid out like ../shared/data?)")
        row.update(preset=preset or row["preset"], params=json.dumps({"tv_baseline": True}) if tv else None,
                   suite=suite, paper_psnr=paper_psnr, crop=crop)
        if row.get("published_uri"):
            row["published_psnr"] = published_psnr(row["published_uri"], row["reference_uri"], storage_options)
    return [{column: row.get(column) for column in COLUMNS} for row in replicates(rows, seeds)]


def replicates(rows: list[dict], seeds: int) -> list[dict]:
    """Each row as ``seeds`` rows ``<id>-s1`` ... (the rows themselves when ``seeds`` is 1): fit seeds
    of their own (a row's explicit seed becomes the draw's), one degradation draw, seeded by the row's
    explicit seed or else by its id."""
    if seeds == 1:
        return rows
    out = []
    for row in rows:
        draw = row["seed"] if row.get("seed") is not None else derive_seed(0, row["image_id"])
        for k in range(1, seeds + 1):
            out.append({**row, "image_id": f"{row['image_id']}-s{k}", "seed": None, "replicate_of": row["image_id"],
                        "replicate": k, "degradation_seed": draw if row.get("degradation") else None})
    return out


def _suite_rows(suite: str, data: str, degradation: str | None, storage_options: dict | None) -> list[dict]:
    def at(*parts: str) -> str:
        return storage.join(data, *parts)

    if suite == "set5-x4":
        return [{"image_id": name, "uri": at("set5_x4", f"{name}_GT.png"), "task": "sr",
                 "degradation": "downsample:4", "preset": "sr-x4"} for name in SET5]
    if suite == "denoise-color-25":
        folder = "denoise_color_sigma25"
        return [{"image_id": name, "uri": at(folder, f"{name}_noisy.png"), "task": "denoise",
                 "reference_uri": at(folder, f"{name}_GT.png"), "published_uri": at(folder, f"{name}_bm3d.png"),
                 "preset": "denoise"} for name in DENOISE_COLOR]
    if suite == "archive-synthetic":  # both tasks see one observation: the seed is per image and subset
        folder = "denoise_color_sigma25"
        return [{"image_id": f"{name}-{kind}{sigma}-{task}", "uri": at(folder, f"{name}_GT.png"), "task": task,
                 "degradation": f"{kind}:{sigma}", "preset": task, "subset": subset,
                 "seed": derive_seed(0, f"{name}-{kind}{sigma}")}
                for i, name in enumerate(DENOISE_COLOR) for sigma in [ARCHIVE_SIGMAS[i % len(ARCHIVE_SIGMAS)]]
                for kind, subset in (("archive", "defects"), ("grain", "clean")) for task in ARCHIVE_TASKS]
    if suite == "inpaint-samples":
        folder = ("samples", "inpainting")
        return [{"image_id": name, "uri": at(*folder, f"{name}.png"), "task": "inpaint",
                 "reference_uri": at(*folder, f"{name}.png"), "mask_uri": at(*folder, f"{name}_mask.png"),
                 "preset": preset} for name, preset in INPAINT_SAMPLES.items()]
    base = data.rstrip("/")
    if not storage.exists(base, storage_options):
        raise FileNotFoundError(f"suite 'folder': no folder or prefix {data!r}")
    urls = [u for u in storage.list_files(base, storage_options) if u.lower().endswith(IMAGE_SUFFIXES)]
    if not urls:
        raise ValueError(f"suite 'folder': no images ({', '.join(IMAGE_SUFFIXES)}) under {data!r}")
    relatives = [u[len(base):].lstrip("/") if u.startswith(base) else u.rsplit("/", 1)[-1] for u in urls]
    return [{"image_id": image_id, "uri": u, "degradation": degradation, "preset": None}
            for u, image_id in zip(urls, image_ids(relatives), strict=True)]


def published_psnr(published: str, reference: str, storage_options: dict | None) -> float:
    """PSNR (dB) of a published method's output of an image against the image's reference."""
    from ..core.images import decode
    from ..core.metrics import psnr

    pictures = [decode(storage.read_bytes(u, storage_options), name=u) for u in (published, reference)]
    if pictures[0].pixels.shape != pictures[1].pixels.shape:
        raise ValueError(f"{published} is {pictures[0].width}x{pictures[0].height}, its reference {reference} "
                         f"{pictures[1].width}x{pictures[1].height}")
    return psnr(pictures[0].pixels, pictures[1].pixels)


def centre_crop(data: bytes, size: int, name: str) -> bytes:
    """The ``size`` x ``size`` centre of an image (upright per its EXIF orientation) as PNG bytes."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image)
            width, height = image.size
            if width < size or height < size:
                raise ValueError(f"{name} is {width}x{height}, smaller than the crop {size}x{size}")
            left, top = (width - size) // 2, (height - size) // 2
            buffer = io.BytesIO()
            image.crop((left, top, left + size, top + size)).save(buffer, format="PNG")
    except OSError as error:
        raise ValueError(f"{name}: cannot crop it: {error}") from None
    return buffer.getvalue()


def write_manifest(rows: list[dict], output: str, storage_options: dict | None = None) -> str:
    """Write the rows to ``<output>/evaluation_manifest.parquet``; returns its URL."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = {"paper_psnr": pa.float64(), "published_psnr": pa.float64(), "seed": pa.int64(),
             "degradation_seed": pa.int64(), "replicate": pa.int64(), "crop": pa.int64()}
    schema = pa.schema([(c, kinds.get(c, pa.string())) for c in COLUMNS])
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema), sink)
    url = storage.under(output, MANIFEST_NAME, storage_options=storage_options)
    storage.write_bytes(url, sink.getvalue().to_pybytes(), storage_options)
    return url

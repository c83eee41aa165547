"""Image manifests: a Parquet table (any fsspec URL) with one row per image to restore.

Columns: ``image_id`` and ``uri`` (required); ``task``, ``mask_uri``, ``reference_uri``,
``guide_uri``, ``scale``, ``degradation``, ``preset``, ``params`` (JSON of ``dip restore``
option names), ``seed``, ``degradation_seed`` (the seed of a ``degradation``'s draw, where it
is not the fit's: the replicates of an evaluation over several seeds see one observation) (optional).
Other columns are the archive's own and are carried
through to the results untouched.

The manifest is read in record batches, never whole. ``plan`` checks every row before
anything runs and turns each into a resolved job: the ``Options`` of the fit, a seed derived
from the image id, and a hash of everything that determines the result.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import difflib
import hashlib
import json
import math
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import pyarrow as pa
import pyarrow.dataset as pads

from .. import storage
from ..core.config import stable_dict
from ..core.formats import IMAGE_SUFFIXES
from ..core.operators import parse_degradation
from ..core.options import Options, resolve_preset

REQUIRED = ("image_id", "uri")
OPTIONAL = ("task", "mask_uri", "reference_uri", "guide_uri", "scale", "degradation", "preset", "params", "seed",
            "degradation_seed", "page")
# the tasks a degradation's observation may be restored by, its own first (a synthetic archive scan
# may also be restored by plain denoising, the comparison of the archive-synthetic suite)
DEGRADATION_TASKS = {"noise": ("denoise",), "downsample": ("sr",), "mask": ("inpaint",), "jpeg": ("jpeg",),
                     "archive": ("archive", "denoise"), "grain": ("archive", "denoise")}
MAX_ERRORS_SHOWN = 20


class ManifestError(ValueError):
    """The manifest cannot run; the message names the bad rows."""


@dataclass(frozen=True)
class Job:
    """One image to restore, fully resolved."""

    image_id: str
    uri: str
    options: Options
    mask_uri: str | None
    reference_uri: str | None
    guide_uri: str | None
    degradation: str | None
    config_hash: str
    extra: dict  # the archive's own columns
    degradation_seed: int | None = None  # the degradation's draw (None: the fit's seed)
    page: int | None = None  # the page of a multi-page uri (0-based; None: a single-page image)

    def to_row(self) -> dict:
        return {
            "image_id": self.image_id, "uri": self.uri, "options": json.dumps(self.options.to_dict()),
            "mask_uri": self.mask_uri, "reference_uri": self.reference_uri, "guide_uri": self.guide_uri,
            "degradation": self.degradation, "config_hash": self.config_hash,
            "extra": json.dumps(self.extra, default=json_value), "degradation_seed": self.degradation_seed,
            "page": self.page,
        }

    @classmethod
    def from_row(cls, row: dict) -> "Job":
        return cls(
            image_id=row["image_id"], uri=row["uri"], options=Options(**json.loads(row["options"])),
            mask_uri=row["mask_uri"], reference_uri=row["reference_uri"], guide_uri=row["guide_uri"],
            degradation=row["degradation"], config_hash=row["config_hash"], extra=json.loads(row["extra"]),
            degradation_seed=_optional_int(row.get("degradation_seed"), "degradation_seed"),
            page=_optional_int(row.get("page"), "page"),
        )


def json_value(value):
    """A catalogue value as JSON carries it across the plan: timestamps, dates and times as ISO text,
    decimals as text, bytes as base64 (``results.column`` casts them back to the manifest's types)."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    raise TypeError(f"a catalogue value of type {type(value).__name__} cannot be carried: {_short(value)}")


def catalogue_schema(url: str, storage_options: dict | None = None) -> pa.Schema:
    """The manifest's own columns (neither known nor a results column): what the results carry."""
    from .results import COLUMNS

    return pa.schema([f for f in _dataset(url, storage_options).schema
                      if f.name not in (*REQUIRED, *OPTIONAL) and f.name not in COLUMNS])


def _optional_int(value, name: str) -> int | None:
    """An optional integer column's value: None for a null (which Arrow may hand over as NaN);
    ValueError naming the column for anything but an integer."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"{name} must be an integer, got {_short(value)}")
    return int(value)


def derive_seed(base_seed: int, image_id: str) -> int:
    """A per-image seed from the run's base seed and the image id (stable across runs)."""
    digest = hashlib.blake2b(f"{base_seed}:{image_id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def config_hash(job_fields: dict) -> str:
    """A short hash of what determines a result (not the device it runs on)."""
    text = json.dumps(job_fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _dataset(url: str, storage_options: dict | None) -> pads.Dataset:
    fs, path = storage.filesystem(url, storage_options)
    if not storage.exists(url, storage_options):
        raise ManifestError(f"manifest {url}: no such file or folder")
    try:
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
    except (pa.ArrowInvalid, OSError) as error:
        raise ManifestError(f"manifest {url} is not a readable Parquet file or folder: {error}") from None
    missing = [c for c in REQUIRED if c not in dataset.schema.names]
    if missing:
        raise ManifestError(f"manifest {url} lacks the required column(s) {', '.join(missing)}")
    return dataset


def read_batches(url: str, storage_options: dict | None = None, batch_size: int = 10_000) -> Iterator[pa.RecordBatch]:
    """The manifest's record batches, streamed (a file or a folder of Parquet files)."""
    dataset = _dataset(url, storage_options)
    try:
        yield from dataset.to_batches(batch_size=batch_size)
    except pa.ArrowInvalid as error:
        raise ManifestError(f"manifest {url} could not be read: {error}") from None


def look_alike(name: str) -> str | None:
    """The known column a column name looks like a misspelling of (None: it is known, or like
    none): the same once lower-cased with '-' and ' ' as '_' (``Task``, ``mask-uri``), the same letters
    in another order (``tsak``), close by difflib's ratio (``degredation``, ``refrence_uri``), or one
    letter replaced (``url``)."""
    known = (*REQUIRED, *OPTIONAL)
    if name in known:
        return None
    plain = re.sub(r"[- ]", "_", name.strip().lower())
    if plain in known:
        return plain
    same_letters = [k for k in known if len(plain) >= 3 and sorted(k) == sorted(plain)]
    one_off = [k for k in known if len(plain) >= 3 and len(k) == len(plain)
               and sum(a != b for a, b in zip(k, plain, strict=True)) == 1]
    close = same_letters or difflib.get_close_matches(plain, known, n=1, cutoff=0.8) or one_off
    return close[0] if close else None


def check_columns(url: str, storage_options: dict | None = None, *, strict: bool = False) -> list[str]:
    """Warnings for the manifest's columns that look like misspelt known ones (carried through as
    catalogue fields, they would leave the run on its defaults), and for those named like a results
    column (not carried: the run's own value has that name); with ``strict``, ManifestError instead."""
    from .results import COLUMNS

    names = _dataset(url, storage_options).schema.names
    warnings = [f"column {name!r} looks like {like!r}: it is carried through as a catalogue field, not read as "
                f"{like!r}" for name in names if (like := look_alike(name)) is not None]
    warnings += [f"column {name!r} is a results column: the run's own {name} takes its place in the results "
                 "(rename it to carry it)" for name in names if name in COLUMNS and name not in (*REQUIRED, *OPTIONAL)]
    if strict and warnings:
        raise ManifestError(f"manifest {url}: " + "; ".join(warnings) + " (rename the column, or run without --strict)")
    return warnings


def plan(url: str, defaults: Options, *, storage_options: dict | None = None) -> Iterator[Job]:
    """Validate the manifest and yield its jobs as they are read.

    Bad rows are collected; once the whole manifest has been read, ManifestError names them
    (the first ``MAX_ERRORS_SHOWN``). Callers must not schedule anything until the iterator
    is exhausted: write the jobs to a plan, then run the plan. Memory: 12 bytes per image id
    (to find duplicates), not the rows themselves.
    """
    rows = (row for batch in read_batches(url, storage_options) for row in batch.to_pylist())
    yield from check_rows(rows, defaults, f"manifest {url}")


def check_rows(rows: Iterable[dict], defaults: Options, name: str) -> Iterator[Job]:
    """``plan``'s checks over manifest rows (``dip manifest`` checks the manifest it writes with them):
    each row resolved (``resolve``), image ids unique; ManifestError naming ``name`` and the bad rows."""
    seen: set[bytes] = set()
    errors: list[str] = []
    error_count = count = 0
    for row in rows:
        count += 1
        try:
            job = resolve(row, defaults)
            key = hashlib.blake2b(job.image_id.encode(), digest_size=12).digest()
            if key in seen:
                raise ValueError(f"duplicate image_id {job.image_id!r}")
            seen.add(key)
        except ValueError as error:
            error_count += 1
            if len(errors) < MAX_ERRORS_SHOWN:
                errors.append(f"row {count} (image_id {_short(row.get('image_id'))}): {error}")
            continue
        if not error_count:
            yield job
    if error_count:
        more = f"\n... and {error_count - len(errors)} more" if error_count > len(errors) else ""
        raise ManifestError(f"{name}: {error_count} of {count} rows are invalid, nothing was run:\n"
                            + "\n".join(errors) + more)
    if count == 0:
        raise ManifestError(f"{name} has no rows")


def resolve(row: dict, defaults: Options) -> Job:
    """One manifest row on top of the command-line defaults; raises ValueError on bad values."""
    image_id = row.get("image_id")
    if not isinstance(image_id, str) or not image_id:
        raise ValueError(f"image_id must be a non-empty string, got {_short(image_id)}")
    storage.safe_key(image_id)
    uri = row.get("uri")
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"uri must be a non-empty string, got {_short(uri)}")

    overrides: dict = {}
    for column in ("task", "preset"):
        if row.get(column) is not None:
            overrides[column] = row[column]
    for column in ("scale", "seed"):  # integers (Arrow may hand a nullable integer column over as floats)
        value = _optional_int(row.get(column), column)
        if value is not None:
            overrides[column] = value
    degradation = row.get("degradation") or None
    if degradation:
        kind, value = parse_degradation(degradation)
        tasks = DEGRADATION_TASKS[kind]
        if overrides.get("task", tasks[0]) not in tasks:
            raise ValueError(f"degradation {degradation!r} makes a {tasks[0]!r} task, "
                             f"but task is {overrides['task']!r}")
        overrides.setdefault("task", tasks[0])
        if kind == "downsample":
            overrides["scale"] = int(value)
    params = row.get("params")
    if params:
        try:
            parsed = json.loads(params)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"params is not valid JSON ({error}): {_short(params)}") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"params must be a JSON object, got {_short(params)}")
        overrides.update(parsed)
    seed = overrides.pop("seed") if "seed" in overrides else derive_seed(defaults.seed, image_id)
    degradation_seed = _optional_int(row.get("degradation_seed"), "degradation_seed")
    if degradation_seed is not None and not degradation:
        raise ValueError(f"degradation_seed {degradation_seed!r} is given but the row has no degradation")
    if overrides.get("task", defaults.task) != defaults.task and "preset" not in overrides:
        overrides["preset"] = None if defaults.preset != "cpu-small" else "cpu-small"
    mask_uri = row.get("mask_uri") or None
    try:
        key = json.dumps(overrides, sort_keys=True)
    except TypeError as error:
        raise ValueError(f"bad params: {error}") from None
    template, hashed, fingerprint = _template(defaults, key, bool(mask_uri or degradation), bool(row.get("guide_uri")))
    options = template.with_seed(seed)
    if degradation and row.get("reference_uri"):
        raise ValueError("give either degradation (the uri is the clean image) or reference_uri, not both")

    known = {*REQUIRED, *OPTIONAL}
    extra = {k: v for k, v in row.items() if k not in known}
    fields = {
        "uri": uri, "mask_uri": mask_uri, "reference_uri": row.get("reference_uri") or None,
        "guide_uri": row.get("guide_uri") or None, "degradation": degradation,
        # what determines the result: not where it runs, nor how long it may take
        "options": {**hashed, "seed": seed}, "preset": fingerprint,
    }
    if degradation_seed is not None:  # (absent from the hash otherwise: the hashes written before it stand)
        fields["degradation_seed"] = degradation_seed
    page = _optional_int(row.get("page"), "page")
    if page is not None:  # (likewise)
        if page < 0:
            raise ValueError(f"page must be 0 or more (0-based), got {page}")
        fields["page"] = page
    return Job(image_id=image_id, uri=uri, options=options, mask_uri=mask_uri,
               reference_uri=fields["reference_uri"], guide_uri=fields["guide_uri"], degradation=degradation,
               config_hash=config_hash(fields), extra=extra, degradation_seed=degradation_seed, page=page)


@lru_cache(maxsize=4096)
def _template(defaults: Options, overrides: str, has_mask: bool, has_guide: bool) -> tuple[Options, dict, str]:
    """The options of the rows that differ only in their seed (``overrides``: JSON, no seed), checked
    once: (options, what the result hash covers of them but the seed, the preset's fingerprint)."""
    try:
        options = Options.from_dict({**defaults.to_dict(), **json.loads(overrides)})
    except TypeError as error:
        raise ValueError(f"bad params: {error}") from None
    options.check_complete(has_mask=has_mask, has_guide=has_guide)
    hashed = {**options.hash_dict(), "device": "", "time_limit_s": None}
    hashed.pop("seed")
    return options, hashed, preset_fingerprint(options)


def preset_fingerprint(options: Options) -> str:
    """The resolved preset as JSON (cached: a manifest resolves a handful of distinct ones)."""
    return _fingerprint(options.task, options.preset, options.scale, options.iterations, options.early_stop,
                        options.stop_rule, options.tv_weight, options.average_last)


@lru_cache(maxsize=1024)
def _fingerprint(*key) -> str:
    return json.dumps(stable_dict(resolve_preset(*key)), sort_keys=True)


def manifest_id(relative: str) -> str:
    """A storage-safe image id from a relative path; a hash suffix where characters changed."""
    mapped = relative.replace("/", "__")  # folders become '__'; duplicates are caught by the manifest check
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", mapped).lstrip("._-") or "image"
    if cleaned != mapped or len(cleaned) > 180:
        cleaned = cleaned[:180] + "-" + hashlib.blake2b(relative.encode(), digest_size=4).hexdigest()
    return cleaned


def image_ids(relatives: list[str]) -> list[str]:
    """Storage-safe ids for relative image paths (``manifest_id``) without their extension (so that
    outputs are ``restored/photo.png``, not ``photo.png.png``), but where that would make two ids
    alike (``a.png`` and ``a.jpg``): those keep it."""
    stems = [posixpath.splitext(r)[0] if r.lower().endswith(IMAGE_SUFFIXES) else r for r in relatives]
    taken = Counter(stems)
    return [manifest_id(stem if taken[stem] == 1 else relative)
            for stem, relative in zip(stems, relatives, strict=True)]


def companion(url: str, pattern: str) -> str:
    """The file a naming pattern gives beside an image: ``{stem}_mask.png`` for ``scans/a.tif`` is
    ``scans/a_mask.png`` (fields: ``{stem}``, ``{name}``, ``{ext}``)."""
    folder, _, name = url.rpartition("/")
    stem, ext = posixpath.splitext(name)
    try:
        made = pattern.format(stem=stem, name=name, ext=ext.lstrip("."))
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"pattern {pattern!r} is not usable ({error}); its fields are {{stem}}, {{name}}, {{ext}}") \
            from None
    if made == name or "/" in made:
        raise ValueError(f"pattern {pattern!r} must name another file in the image's folder, e.g. '{{stem}}_mask.png'")
    return f"{folder}/{made}" if folder else made


def listing_rows(source: str, storage_options: dict | None = None, *, mask_pattern: str | None = None,
                 reference_pattern: str | None = None, **columns) -> list[dict]:
    """Manifest rows for the images under a prefix or matching a glob (``dip manifest``): an
    ``image_id`` from each path below the prefix (``image_ids``), its ``uri``, and ``columns``
    (task, scale, degradation, preset) on every row. With ``mask_pattern`` / ``reference_pattern``
    (``companion``) each image's mask / reference is attached by name, and those files are not
    listed as images; an image without one is a ValueError naming it."""
    wild = min((source.index(c) for c in "*?[" if c in source), default=len(source))
    folder = source[:wild] if wild == len(source) else source[:wild].rpartition("/")[0]  # above the first wildcard
    base = storage.canonical(folder or ".", storage_options).rstrip("/")  # as the listing names files
    urls = [u for u in storage.list_files(source, storage_options) if u.lower().endswith(IMAGE_SUFFIXES)]
    patterns = {"mask_uri": mask_pattern, "reference_uri": reference_pattern}
    patterns = {column: pattern for column, pattern in patterns.items() if pattern}
    found = set(urls)
    companions = {companion(u, p) for u in urls for p in patterns.values()} & found
    images = [u for u in urls if u not in companions]
    relatives = [u[len(base) + 1:] if u.startswith(base + "/") else u.rsplit("/", 1)[-1] for u in images]
    rows = []
    for url, image_id in zip(images, image_ids(relatives), strict=True):
        row = {"image_id": image_id, "uri": url, **columns}
        for column, pattern in patterns.items():
            row[column] = companion(url, pattern)
            if row[column] not in found:
                flag = "--mask-pattern" if column == "mask_uri" else "--reference-pattern"
                raise ValueError(f"{url} has no {column[:-4]} {row[column]} ({flag} {pattern!r})")
        rows.append(row)
    return rows


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

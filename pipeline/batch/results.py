"""The results table: one small Parquet file per image and attempt, under ``<output>/results/``.

Keys are deterministic: ``results/<image_id>/<config_hash>-<attempt>-<status>.parquet``.
What is done is read from a listing alone (no file is opened), so a rerun of the same
command skips every image with an ``ok`` result for the same configuration.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage

COLUMNS = {
    "image_id": pa.string(), "uri": pa.string(), "task": pa.string(), "preset": pa.string(),
    "status": pa.string(), "error": pa.string(), "output_uri": pa.string(),
    "psnr": pa.float64(), "ssim": pa.float64(), "psnr_y": pa.float64(),
    "psnr_input": pa.float64(), "psnr_baseline": pa.float64(), "psnr_y_baseline": pa.float64(),
    "psnr_tv": pa.float64(), "psnr_y_tv": pa.float64(), "noise_sigma": pa.float64(), "stop_rule": pa.string(),
    # archive: the share of pixels filled as defects, the mask written, and (evaluations) the truth
    "defect_fraction": pa.float64(), "mask_output_uri": pa.string(), "noise_sigma_true": pa.float64(),
    "mask_precision": pa.float64(), "mask_recall": pa.float64(), "mask_iou": pa.float64(),
    "iterations": pa.int64(), "best_iteration": pa.int64(), "stopped_early": pa.bool_(),
    "backtracks": pa.int64(), "seconds": pa.float64(), "device": pa.string(), "packed": pa.int64(), "tiles": pa.int64(),
    "attempt": pa.int64(),
    "config_hash": pa.string(), "seed": pa.int64(), "run_id": pa.string(),
    "started_at": pa.timestamp("us", tz="UTC"), "finished_at": pa.timestamp("us", tz="UTC"),
    "history": pa.string(),  # JSON list of {iteration, loss, psnr_observation, psnr_reference, seconds}
}
STATUSES = ("ok", "error")


def result_key(output: str, image_id: str, config_hash: str, attempt: int, status: str) -> str:
    return storage.join(output, "results", storage.safe_key(image_id), f"{config_hash}-{attempt:04d}-{status}.parquet")


def encode_row(row: dict, extra: dict) -> bytes:
    """One result row (plus the manifest's own columns) as Parquet bytes."""
    columns = {name: pa.array([row.get(name)], type=kind) for name, kind in COLUMNS.items()}
    for name, value in extra.items():
        if name not in columns:
            columns[name] = pa.array([value])
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def write_row(output: str, row: dict, extra: dict, storage_options: dict | None = None) -> str:
    url = result_key(output, row["image_id"], row["config_hash"], row["attempt"], row["status"])
    storage.write_bytes(url, encode_row(row, extra), storage_options)
    return url


@dataclass
class Done:
    """What earlier attempts left, per (image_id, config_hash)."""

    ok: set[tuple[str, str]]
    attempts: dict[tuple[str, str], int]  # highest attempt number seen

    def next_attempt(self, image_id: str, config_hash: str) -> int:
        return self.attempts.get((image_id, config_hash), 0) + 1


def scan(output: str, storage_options: dict | None = None) -> Done:
    """Read the results listing (after invalidating any cached listing)."""
    done = Done(ok=set(), attempts={})
    prefix = storage.join(output, "results")
    if not storage.exists(prefix, storage_options):
        return done
    for url in storage.list_files(prefix, storage_options):
        parsed = parse_key(url)
        if parsed is None:
            continue
        image_id, config_hash, attempt, status = parsed
        key = (image_id, config_hash)
        done.attempts[key] = max(done.attempts.get(key, 0), attempt)
        if status == "ok":
            done.ok.add(key)
    return done


def parse_key(url: str) -> tuple[str, str, int, str] | None:
    parts = url.rstrip("/").split("/")
    if len(parts) < 2 or not parts[-1].endswith(".parquet"):
        return None
    stem = parts[-1][: -len(".parquet")]
    pieces = stem.split("-")
    if len(pieces) != 3 or pieces[2] not in STATUSES or not pieces[1].isdigit():
        return None
    return parts[-2], pieces[0], int(pieces[1]), pieces[2]


def read_table(output: str, storage_options: dict | None = None, urls: Iterable[str] | None = None) -> pa.Table:
    """All result rows under ``output`` as one table (columns unified across files)."""
    prefix = storage.join(output, "results")
    if urls is None:
        urls = storage.list_files(prefix, storage_options) if storage.exists(prefix, storage_options) else []
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(u, storage_options))) for u in urls if parse_key(u)]
    if not tables:
        return pa.table({name: pa.array([], type=kind) for name, kind in COLUMNS.items()})
    return pa.concat_tables(tables, promote_options="permissive")

"""Compaction (``dip compact OUTPUT``, and at the end of every run): result files folded into a few large ones.

1. List the inputs: the shards and earlier-layout files (and, for a full compaction, the compacted
   files too).
2. Read their key columns and choose the rows to keep: per (image_id, config_hash) the latest
   attempt and the latest ``ok`` attempt (what resume and reports read). Every other row (earlier
   attempts, a retried task's second copy) is superseded.
3. Stream the inputs once more: kept rows to ``results/compacted-<stamp>-<n>.parquet``, superseded
   ones to ``attempts/<stamp>-<n>.parquet`` (the history, never read by resume or reports).
4. Delete the inputs, only once every output is written. A compaction killed before this leaves
   copies of rows (never a lost one): readers treat copies alike, and the next compaction folds them.

Run one compaction at a time per output; a run may write new shards meanwhile (they are not inputs).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import storage
from . import results

ROWS_PER_FILE = 100_000
KEY_COLUMNS = ("image_id", "config_hash", "attempt", "status", "finished_at")


@dataclass
class Compaction:
    inputs: int = 0  # files folded
    rows: int = 0
    kept: int = 0
    superseded: int = 0
    written: tuple[str, ...] = ()


def compact(output: str, storage_options: dict | None = None, *, full: bool = True,
            rows_per_file: int = ROWS_PER_FILE) -> Compaction:
    """Fold the result files under ``output`` (``full=False``: only shards and earlier-layout files,
    leaving compacted files as they are, as at the end of a run). Nothing to fold: nothing written."""
    # 1. The inputs.
    files = results.list_files(output, storage_options)
    tables = [u for u in files.tables if full or not u.rsplit("/", 1)[-1].startswith("compacted-")]
    inputs = tables + files.legacy
    summary = Compaction(inputs=len(inputs))
    if not inputs or (len(inputs) == 1 and not files.legacy and not _shard(inputs[0])):
        return summary

    # 2. The rows to keep, by position in the inputs' (ordered) scan.
    keys = storage.retrying("read", output, lambda: results.dataset(inputs, storage_options, KEY_COLUMNS).to_table(),
                            storage_options)
    keep = keep_mask(keys)
    summary.rows, summary.kept = len(keys), int(keep.sum())
    summary.superseded = summary.rows - summary.kept

    # 3. Stream the rows to their files.
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    every = results.dataset(inputs, storage_options)  # all columns, schemas unified
    kept = _Sink(storage.under(output, "results", storage_options=storage_options), f"compacted-{stamp}", every.schema,
                 rows_per_file, storage_options)
    moved = _Sink(storage.under(output, "attempts", storage_options=storage_options), stamp, every.schema,
                  rows_per_file, storage_options)
    position = 0

    def stream() -> None:
        nonlocal position
        position = 0
        kept.reset(), moved.reset()
        for batch in results.batches(every):
            results.check_order(batch, keys["image_id"], position, output)
            chosen = keep[position:position + len(batch)]
            position += len(batch)
            kept.add(batch.filter(pa.array(chosen)))
            moved.add(batch.filter(pa.array(~chosen)))
        kept.close(), moved.close()

    storage.retrying("compact", output, stream, storage_options)
    if position != len(keep):
        raise RuntimeError(f"compaction of {output}: the inputs changed while read ({position} rows, then "
                           f"{len(keep)}); nothing was deleted")
    summary.written = tuple(kept.urls + moved.urls)

    # 4. Delete the inputs.
    storage.delete(inputs, storage_options)  # the per-image layout's folders go with their files
    return summary


def keep_mask(keys: pa.Table) -> np.ndarray:
    """Per row of ``keys`` (``KEY_COLUMNS``): True for the latest attempt of its (image_id,
    config_hash) and for the latest ok attempt (each once: later copies of a row are superseded)."""
    keep = np.zeros(len(keys), dtype=bool)
    by, order = ["image_id", "config_hash"], [("attempt", "descending"), ("finished_at", "descending")]
    keep[results.first_rows(keys, by, order)] = True
    ok = np.flatnonzero(pc.equal(keys["status"], "ok").fill_null(False).to_numpy(zero_copy_only=False))
    keep[ok[results.first_rows(keys.take(ok), by, order)]] = True
    return keep


def _shard(url: str) -> bool:
    return url.rsplit("/", 1)[-1].startswith("shard-")


class _Sink:
    """Batches into Parquet files of at most ``rows`` rows, each written whole (atomically)."""

    def __init__(self, prefix: str, stem: str, schema: pa.Schema, rows: int, storage_options: dict | None):
        self.prefix, self.stem, self.schema, self.rows = prefix, stem, schema, rows
        self.storage_options = storage_options
        self.reset()

    def reset(self) -> None:
        self.urls: list[str] = []
        self.writer, self.sink, self.count = None, None, 0

    def add(self, batch: pa.RecordBatch) -> None:
        while len(batch):
            if self.writer is None:
                self.sink = pa.BufferOutputStream()
                self.writer = pq.ParquetWriter(self.sink, self.schema, compression="zstd")
            room = self.rows - self.count
            self.writer.write_batch(batch.slice(0, room), row_group_size=results.ROW_GROUP)
            self.count += min(room, len(batch))
            batch = batch.slice(room)
            if self.count >= self.rows:
                self.close()

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        url = storage.under(self.prefix, f"{self.stem}-{len(self.urls):04d}.parquet",
                            storage_options=self.storage_options)
        storage.write_bytes(url, self.sink.getvalue().to_pybytes(), self.storage_options)
        self.urls.append(url)
        self.writer, self.sink, self.count = None, None, 0


"""The results table: Parquet shards of many rows under ``<output>/results/``, read as one dataset.

Layout (every key deterministic, every file written whole, atomically):

- ``results/shard-<run_id>-<writer>-<sequence>.parquet``: the rows one fit actor buffered, written
  every ``SHARD_ROWS`` rows or ``SHARD_SECONDS`` seconds and when the actor ends (``ShardWriter``);
- ``results/compacted-<stamp>-<n>.parquet``: shards folded into large files (``pipeline.batch.compact``);
- ``results/<image_id>/<config_hash>-<attempt>-<status>.parquet``: the earlier layout, one file per
  image and attempt; still read, and folded by compaction.

One row per image and attempt; the columns are ``COLUMNS`` (the large ``history`` column last, so
that readers that leave it out never decode it) and then the manifest's own columns. A row is
written after its image, so an image counts as done only once its row is stored.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from .. import storage

COLUMNS = {
    "image_id": pa.string(), "uri": pa.string(), "task": pa.string(), "preset": pa.string(),
    "status": pa.string(), "error": pa.string(), "output_uri": pa.string(),
    "psnr": pa.float64(), "ssim": pa.float64(), "psnr_y": pa.float64(),
    "psnr_input": pa.float64(), "psnr_baseline": pa.float64(), "psnr_y_baseline": pa.float64(),
    "psnr_tv": pa.float64(), "psnr_y_tv": pa.float64(), "noise_sigma": pa.float64(), "stop_rule": pa.string(),
    "warm_start": pa.string(),  # none, neighbour or shrink (tiles), collection (pipeline.core.warm)
    # archive: the share of pixels filled as defects, the mask written, and (evaluations) the truth
    "defect_fraction": pa.float64(), "mask_output_uri": pa.string(), "noise_sigma_true": pa.float64(),
    "degraded_uri": pa.string(),  # evaluations: the degraded image the fit saw, degraded/<image_id>.png
    "mask_precision": pa.float64(), "mask_recall": pa.float64(), "mask_iou": pa.float64(),
    "iterations": pa.int64(), "best_iteration": pa.int64(), "stopped_early": pa.bool_(),
    "backtracks": pa.int64(), "seconds": pa.float64(), "device": pa.string(), "packed": pa.int64(), "tiles": pa.int64(),
    "restarts": pa.int64(), "attempt": pa.int64(),
    "ray_node": pa.string(),  # the Ray node (its id) the fit ran on
    "fit_starts": pa.int64(),  # times this run started the image's fit (more than 1: a worker or node was lost)
    "config_hash": pa.string(), "seed": pa.int64(), "run_id": pa.string(),
    "started_at": pa.timestamp("us", tz="UTC"), "finished_at": pa.timestamp("us", tz="UTC"),
    "history": pa.string(),  # JSON list of {iteration, loss, psnr_observation, psnr_reference, seconds}
}
STATUSES = ("ok", "error")
DONE_COLUMNS = ("image_id", "config_hash", "status", "attempt")  # what the resume check reads
SHARD_ROWS, SHARD_SECONDS = 1000, 60.0  # a shard per this many rows or seconds, whichever comes first
ROW_GROUP = 10_000


def schema(columns) -> pa.Schema:
    """The schema of some of ``COLUMNS`` (by name), in the order given."""
    return pa.schema([(name, COLUMNS[name]) for name in columns])


def rows_table(rows: list[dict]) -> pa.Table:
    """Result rows (``COLUMNS`` plus the manifest's own columns, typed by their values) as a table."""
    extra: dict[str, None] = {}
    for row in rows:
        extra.update((name, None) for name in row if name not in COLUMNS)
    columns = {name: pa.array([row.get(name) for row in rows], type=kind) for name, kind in COLUMNS.items()}
    for name in extra:
        columns[name] = pa.array([row.get(name) for row in rows])
    return pa.table(columns)


def table_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=ROW_GROUP)
    return buffer.getvalue()


class ShardWriter:
    """Buffers one writer's result rows and writes them as shards: every ``rows`` rows, when the
    oldest buffered row is ``seconds`` old (checked as rows arrive), and on ``flush()``. A writer
    killed loses only its buffered rows; their images have no row, so a rerun fits them again."""

    def __init__(self, output: str, run_id: str, storage_options: dict | None = None, *,
                 rows: int = SHARD_ROWS, seconds: float = SHARD_SECONDS, writer_id: str | None = None):
        if rows < 1 or seconds <= 0:
            raise ValueError(f"shard size must be at least 1 row and more than 0 s, got {rows} rows, {seconds} s")
        self.output, self.run_id, self.storage_options = output, run_id, storage_options
        self.rows, self.seconds = rows, seconds
        self.writer_id = writer_id or uuid.uuid4().hex[:8]
        self.sequence, self.buffer, self.oldest = 0, [], None
        self.written = 0  # shards written

    def key(self, sequence: int) -> str:
        name = f"shard-{self.run_id}-{self.writer_id}-{sequence:06d}.parquet"
        return storage.join(self.output, "results", name)

    def add(self, row: dict) -> str:
        """Buffer one row (flushing when the shard is full or old enough); returns the shard's URL."""
        url = self.key(self.sequence)
        self.buffer.append(row)
        self.oldest = self.oldest or time.monotonic()
        if len(self.buffer) >= self.rows or time.monotonic() - self.oldest >= self.seconds:
            self.flush()
        return url

    def flush(self) -> None:
        if not self.buffer:
            return
        storage.write_bytes(self.key(self.sequence), table_bytes(rows_table(self.buffer)), self.storage_options)
        self.sequence, self.buffer, self.oldest, self.written = self.sequence + 1, [], None, self.written + 1


def writer_rows(output: str, run_id: str, writer_id: str, columns, storage_options: dict | None = None) -> dict:
    """The rows one writer of a run stored (its shards, ``shard-<run_id>-<writer_id>-*``), by (image_id,
    config_hash): ``columns`` (names of ``COLUMNS``) and ``shard``, the URL of the shard holding the row.
    What a lost actor recorded before it died, for the actor that takes over its batch."""
    columns = list(dict.fromkeys(["image_id", "config_hash", *columns]))
    rows = {}
    for url in storage.list_files(storage.join(output, "results", f"shard-{run_id}-{writer_id}-*.parquet"),
                                  storage_options):
        table = pq.read_table(pa.BufferReader(storage.read_bytes(url, storage_options)), columns=columns)
        rows.update(((row["image_id"], row["config_hash"]), {**row, "shard": url}) for row in table.to_pylist())
    return rows


@dataclass
class Files:
    """The result files under an output: the shards and compacted files, and the earlier layout's."""

    tables: list[str]
    legacy: list[str]

    @property
    def all(self) -> list[str]:
        return self.tables + self.legacy


def list_files(output: str, storage_options: dict | None = None) -> Files:
    """The result files, from one listing of ``results/`` (and, only where the earlier per-image
    layout left folders, a recursive listing)."""
    prefix = storage.join(output, "results")
    entries = storage.list_dir(prefix, storage_options)
    tables = [u for u, folder in entries if not folder and is_table(u)]
    legacy = []
    if any(folder for _, folder in entries):
        legacy = [u for u in storage.list_files(prefix, storage_options) if parse_key(u)]
    return Files(tables=tables, legacy=legacy)


def is_table(url: str) -> bool:
    name = url.rsplit("/", 1)[-1]
    return name.endswith(".parquet") and name.startswith(("shard-", "compacted-"))


def parse_key(url: str) -> tuple[str, str, int, str] | None:
    """(image_id, config_hash, attempt, status) of an earlier-layout file; None for anything else."""
    parts = url.rstrip("/").split("/")
    if len(parts) < 3 or parts[-3] != "results" or not parts[-1].endswith(".parquet"):
        return None
    pieces = parts[-1][: -len(".parquet")].split("-")
    if len(pieces) != 3 or pieces[2] not in STATUSES or not pieces[1].isdigit():
        return None
    return parts[-2], pieces[0], int(pieces[1]), pieces[2]


def dataset(urls: list[str], storage_options: dict | None = None, columns=None) -> pads.Dataset:
    """The files as one dataset: with ``columns`` (names of ``COLUMNS``, or a schema) only those
    (missing ones read as nulls); without, every column of every file (schemas unified)."""
    if not urls:
        raise ValueError("no result files")
    fs, _ = storage.arrow_filesystem(urls[0], storage_options)
    paths = [storage.filesystem(u, storage_options)[1] for u in urls]
    if columns is None:
        found = storage.retrying("read", urls[0], lambda: [pq.read_schema(p, filesystem=fs) for p in paths],
                                 storage_options)
        wanted = pa.unify_schemas(found, promote_options="permissive")
        known = [pa.field(n, k) for n, k in COLUMNS.items()]
        wanted = pa.schema(known + [f for f in wanted if f.name not in COLUMNS])
    else:
        wanted = columns if isinstance(columns, pa.Schema) else schema(columns)
    return pads.dataset(paths, schema=wanted, format="parquet", filesystem=fs)


def batches(data: pads.Dataset, batch_size: int = ROW_GROUP) -> Iterator[pa.RecordBatch]:
    """A dataset's rows in file order, one file at a time: memory stays at a batch or two however
    slowly they are consumed (a whole-dataset scanner reads ahead without bound when its consumer
    is slower than the disk)."""
    for fragment in data.get_fragments():
        yield from fragment.to_batches(schema=data.schema, batch_size=batch_size, batch_readahead=1, use_threads=False)


def check_order(batch: pa.RecordBatch | pa.Table, keys: pa.ChunkedArray, position: int, output: str) -> None:
    """The rows a second pass reads are the ones the first pass chose from: same image ids, same order
    (else the files changed in between, and nothing may be written from the choice)."""
    if not pa.chunked_array([batch["image_id"]]).equals(keys.slice(position, len(batch))):
        raise RuntimeError(f"the results under {output} changed while read (rows from {position} differ); "
                           "run it again")


def read_table(output: str, storage_options: dict | None = None, columns=None) -> pa.Table:
    """Every result row under ``output`` as one table (for small outputs and tests: reports stream)."""
    files = list_files(output, storage_options)
    if not files.all:
        return pa.table({name: pa.array([], type=kind) for name, kind in COLUMNS.items()})
    return storage.retrying("read", output, lambda: dataset(files.all, storage_options, columns).to_table(),
                            storage_options)


def done_index(output: str, storage_options: dict | None = None) -> pa.Table:
    """Per (image_id, config_hash) with any row: ``attempt``, the highest, and ``ok``, whether one
    attempt succeeded. Reads four columns of the shards and only the names of earlier-layout files."""
    files = list_files(output, storage_options)
    parts = []
    if files.tables:
        parts.append(storage.retrying("read", output, lambda: dataset(files.tables, storage_options,
                                                                      DONE_COLUMNS).to_table(), storage_options))
    if files.legacy:
        keys = list(zip(*(parse_key(u) for u in files.legacy), strict=True))  # image_id, config_hash, attempt, status
        parts.append(pa.table({name: pa.array(keys[i], type=COLUMNS[name]) for i, name in
                               enumerate(("image_id", "config_hash", "attempt", "status"))}).select(DONE_COLUMNS))
    if not parts:
        return pa.table({"image_id": pa.array([], pa.string()), "config_hash": pa.array([], pa.string()),
                         "attempt": pa.array([], pa.int64()), "ok": pa.array([], pa.bool_())})
    rows = pa.concat_tables(parts)
    # Sorted by key, then reduced per run of equal keys (a hash group-by would cost 5x the memory).
    rows = rows.take(pc.sort_indices(rows, [("image_id", "ascending"), ("config_hash", "ascending")]))
    starts = first_rows(rows, ["image_id", "config_hash"], [], presorted=True)
    ok = pc.equal(rows["status"], "ok").fill_null(False).to_numpy(zero_copy_only=False)
    attempts = rows["attempt"].fill_null(0).to_numpy()
    return pa.table({"image_id": rows["image_id"].take(starts), "config_hash": rows["config_hash"].take(starts),
                     "attempt": np.maximum.reduceat(attempts, starts), "ok": np.logical_or.reduceat(ok, starts)})


def lookup(done: pa.Table, image_ids: list[str], config_hashes: list[str]) -> tuple[list[bool], list[int]]:
    """For each (image_id, config_hash): whether it has an ok row, and its highest attempt (0: none),
    by a join of the keys against ``done_index``'s table."""
    keys = pa.table({"image_id": pa.array(image_ids, pa.string()), "config_hash": pa.array(config_hashes, pa.string()),
                     "_position": pa.array(range(len(image_ids)), pa.int64())})
    # The hash table is built on the right side: the keys (a chunk), not the whole index.
    joined = done.join(keys, ["image_id", "config_hash"], join_type="right outer").sort_by("_position")
    return (joined["ok"].fill_null(False).to_pylist(), joined["attempt"].fill_null(0).to_pylist())


def first_rows(table: pa.Table, by: list[str], then: list[tuple[str, str]], *, presorted: bool = False) -> np.ndarray:
    """Indices into ``table`` of one row per distinct ``by``: the first once sorted by ``then``
    (``(column, "ascending" | "descending")``; ties: the earlier row). Sorted by ``by``.
    ``presorted``: the table is sorted by ``by`` already (and ``then`` is not used)."""
    if not len(table):
        return np.zeros(0, dtype=np.int64)
    rows = table.select([*by, *dict.fromkeys(name for name, _ in then if name not in by)])
    rows = rows.append_column("_row", pa.array(np.arange(len(table))))
    if not presorted:
        rows = rows.sort_by([*((name, "ascending") for name in by), *then, ("_row", "ascending")])
    n = len(rows)
    same = pa.array(np.ones(n - 1, dtype=bool))
    for name in by:
        column = rows[name].combine_chunks()
        same = pc.and_(same, pc.fill_null(pc.equal(column.slice(1), column.slice(0, n - 1)),
                                          pc.and_(column.slice(1).is_null(), column.slice(0, n - 1).is_null())))
    first = np.concatenate([[True], ~same.to_numpy(zero_copy_only=False)])
    return rows["_row"].to_numpy()[first]

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

import base64
import io
import sys
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
from .config import SHARD_ROWS, SHARD_SECONDS

COLUMNS = {
    "image_id": pa.string(), "uri": pa.string(), "task": pa.string(), "preset": pa.string(),
    "status": pa.string(), "error": pa.string(), "output_uri": pa.string(),
    "psnr": pa.float64(), "ssim": pa.float64(), "psnr_y": pa.float64(),
    "psnr_input": pa.float64(), "psnr_baseline": pa.float64(), "psnr_y_baseline": pa.float64(),
    "psnr_tv": pa.float64(), "psnr_y_tv": pa.float64(), "noise_sigma": pa.float64(), "stop_rule": pa.string(),
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
ROW_GROUP = 10_000


def schema(columns) -> pa.Schema:
    """The schema of some of ``COLUMNS`` (by name), in the order given."""
    return pa.schema([(name, COLUMNS[name]) for name in columns])


def rows_table(rows: list[dict], catalogue: pa.Schema | None = None) -> pa.Table:
    """Result rows as a table: ``COLUMNS``, then the manifest's own columns, typed as ``catalogue``
    (the manifest's schema of them) says, else by their values."""
    extra: dict[str, None] = {}
    for row in rows:
        extra.update((name, None) for name in row if name not in COLUMNS)
    columns = {name: pa.array([row.get(name) for row in rows], type=kind) for name, kind in COLUMNS.items()}
    for name in extra:
        kind = catalogue.field(name).type if catalogue is not None and name in catalogue.names else None
        columns[name] = column([row.get(name) for row in rows], kind)
    return pa.table(columns)


def column(values: list, kind: pa.DataType | None) -> pa.Array:
    """Python values as an Arrow array of type ``kind`` (None: inferred). A catalogue value crosses the
    plan as JSON (``manifest.json_value``: timestamps and dates as ISO text, decimals as text, bytes as
    base64): it is cast back to its manifest type here."""
    if kind is None:
        return pa.array(values)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        values = [base64.b64decode(v) if isinstance(v, str) else v for v in values]
    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(values).cast(kind)  # ISO text to a timestamp or date, text to a decimal


def storable(row: dict, catalogue: pa.Schema | None = None) -> dict:
    """``row`` when every value fits its column (``COLUMNS``' types; a catalogue column its type in
    ``catalogue``, else its value's own); else, in its place, an error row naming each value that does
    not (those set to null), so that one bad value never takes the rows it would be written with."""
    bad = []
    for name, value in row.items():
        kind = COLUMNS.get(name) or (catalogue.field(name).type if catalogue is not None and name in
                                     catalogue.names else None)
        try:
            column([value], kind)
        except (pa.ArrowException, OverflowError, TypeError, ValueError) as error:
            bad.append((name, value, error))
    if not bad:
        return row
    shown = "; ".join(f"column {name!r}: {_short(value)} cannot be stored ({type(error).__name__}: {error})"
                      for name, value, error in bad)
    fixed = {**row, **{name: None for name, _, _ in bad}, "status": "error", "output_uri": None}
    fixed["error"] = f"the result row could not be stored: {shown}"[:2000]
    return fixed


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def table_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=ROW_GROUP)
    return buffer.getvalue()


class ShardWriter:
    """Buffers one writer's result rows and writes them as shards: every ``rows`` rows, when the
    oldest buffered row is ``seconds`` old (checked as rows arrive), and on ``flush()``. A writer
    killed loses only its buffered rows; their images have no row, so a rerun fits them again."""

    def __init__(self, output: str, run_id: str, storage_options: dict | None = None, *,
                 rows: int = SHARD_ROWS, seconds: float = SHARD_SECONDS, writer_id: str | None = None,
                 catalogue: pa.Schema | None = None):
        if rows < 1 or seconds <= 0:
            raise ValueError(f"shard size must be at least 1 row and more than 0 s, got {rows} rows, {seconds} s")
        self.output, self.run_id, self.storage_options = output, run_id, storage_options
        self.rows, self.seconds, self.catalogue = rows, seconds, catalogue
        self.writer_id = writer_id or uuid.uuid4().hex[:8]
        self.sequence, self.buffer, self.oldest = 0, [], None
        self.written = 0  # shards written

    def key(self, sequence: int) -> str:
        name = f"shard-{self.run_id}-{self.writer_id}-{sequence:06d}.parquet"
        return storage.under(self.output, "results", name, storage_options=self.storage_options)

    def add(self, row: dict) -> str:
        """Buffer one row (flushing when the shard is full or old enough); returns the shard's URL."""
        url = self.key(self.sequence)
        self.buffer.append(storable(row, self.catalogue))
        self.oldest = self.oldest or time.monotonic()
        if len(self.buffer) >= self.rows or time.monotonic() - self.oldest >= self.seconds:
            self.flush()
        return url

    def flush(self) -> None:
        """Write the buffered rows as the next shard (kept buffered, for the next flush, if the write fails)."""
        if not self.buffer:
            return
        storage.write_bytes(self.key(self.sequence), table_bytes(rows_table(self.buffer, self.catalogue)),
                            self.storage_options)
        self.sequence, self.buffer, self.oldest, self.written = self.sequence + 1, [], None, self.written + 1

    def flush_at_exit(self) -> None:
        """``flush`` where nobody can catch its error (a worker's exit): a failure is said on stderr, in
        the worker's log, naming the rows left unstored (their images are fitted again by a rerun)."""
        try:
            self.flush()
        except Exception as error:  # noqa: BLE001  (nothing above this to tell: say it in the log)
            ids = ", ".join(str(row.get("image_id")) for row in self.buffer[:10])
            print(f"dip: {len(self.buffer)} result row(s) of run {self.run_id} could not be stored ({ids}): "
                  f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)


def writer_rows(output: str, run_id: str, writer_id: str, columns, storage_options: dict | None = None) -> dict:
    """The rows one writer of a run stored (its shards, ``shard-<run_id>-<writer_id>-*``), by (image_id,
    config_hash): ``columns`` (names of ``COLUMNS``) and ``shard``, the URL of the shard holding the row.
    What a lost actor recorded before it died, for the actor that takes over its batch."""
    columns = list(dict.fromkeys(["image_id", "config_hash", *columns]))
    rows = {}
    prefix = storage.under(output, "results", storage_options=storage_options)
    for url in storage.list_files(storage.join(prefix, f"shard-{storage.check_name(run_id, 'run id')}-"
                                               f"{storage.check_name(writer_id, 'writer id')}-*.parquet"),
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
    prefix = storage.under(output, "results", storage_options=storage_options)
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
        known = [pa.field(n, k) for n, k in COLUMNS.items()]
        wanted = pa.schema(known + [f for f in catalogue_schema(found) if f.name not in COLUMNS])
    else:
        wanted = columns if isinstance(columns, pa.Schema) else schema(columns)
    return pads.dataset(paths, schema=wanted, format="parquet", filesystem=fs)


def catalogue_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """The carried catalogue columns of result files with these schemas, unified: a column whose
    type changed between runs is promoted where Arrow can (int32 and int64, a type and null), else
    read as text (``year`` int64 in one run, string in the next: both as text)."""
    fields: dict[str, list[pa.DataType]] = {}
    for one in schemas:
        for f in one:
            if f.name not in COLUMNS:
                fields.setdefault(f.name, []).append(f.type)
    unified = []
    for name, kinds in fields.items():
        try:
            unified.append(pa.unify_schemas([pa.schema([(name, k)]) for k in kinds],
                                            promote_options="permissive").field(name))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            unified.append(pa.field(name, pa.string()))
    return pa.schema(unified)


def catalogue_conflicts(output: str, catalogue: pa.Schema, storage_options: dict | None = None) -> list[str]:
    """The manifest's catalogue columns whose type cannot be read together with the one the results
    under ``output`` already hold (one schema read per result file): a message per column."""
    files = list_files(output, storage_options).all
    if not files or not len(catalogue):
        return []
    fs, _ = storage.arrow_filesystem(files[0], storage_options)
    paths = [storage.filesystem(u, storage_options)[1] for u in files]
    stored = catalogue_schema(storage.retrying(
        "read", output, lambda: [pq.read_schema(p, filesystem=fs) for p in paths], storage_options))
    conflicts = []
    for f in catalogue:
        if f.name not in stored.names:
            continue
        earlier = stored.field(f.name).type
        try:
            pa.unify_schemas([pa.schema([(f.name, earlier)]), pa.schema([f])], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            conflicts.append(f"column {f.name!r} is {f.type} in the manifest but {earlier} in the results already "
                             f"under {output}")
    return conflicts


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

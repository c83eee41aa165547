"""The batch job's fit actor: restores the planned images of one Ray Data batch and writes them.

Each row is read, fitted and written on its own, so one bad image is one error row. With a
batch of several rows, images that share ``packed.pack_key`` (same options but the seed, same
size) are fitted together by ``packed.restore_many``; if that pack fails, each of its images is
fitted alone, so a diverging image fails only its own row. A pack that runs out of time is not
refitted: its images cost the same, so each would run out of time alone too.

Before an image is read and fitted, the actor looks for the run's earlier claims of it and writes
its own (``pipeline.batch.claims``). When Ray starts a batch again after its worker or node was lost,
the images whose rows the lost actor stored are not fitted again (their stored rows stand); the
others say how many times their fit was started (``fit_starts``), and an image whose worker died
``max_fit_attempts`` times already is refused (a ``FitLost`` error row), so that a poison image that
kills its node cannot loop forever.

Result rows are buffered and written as shards (``results.ShardWriter``: every ``shard_rows`` rows
or ``shard_seconds`` seconds, and when Ray Data ends the actor); each output row names the shard
its result goes to and the Ray node it ran on, so that the driver can wait for the last ones (and
knows which will never come: those of a node that is gone).
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import time
import traceback
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .. import storage
from ..core.formats import SUFFIX, batch_format
from ..core.options import Options
from . import claims, manifest, results
from .config import MAX_FIT_ATTEMPTS, SHARD_ROWS, SHARD_SECONDS

if TYPE_CHECKING:
    from .inputs import Inputs

OUT_COLUMNS = ("image_id", "status", "error", "psnr", "seconds", "device", "shard", "ray_node", "fit_starts")


@dataclass
class _Item:
    job: manifest.Job
    options: Options
    row: dict  # the result row being built
    clock: float
    loaded: Inputs | None = None  # the row's pictures once read (and, for an evaluation, the truth)
    recorded: dict | None = None  # its output row, stored by an earlier start of this run: not fitted again

    @property
    def inputs(self) -> dict:
        """``restore``'s keyword arguments."""
        return self.loaded.restore_kwargs()


class FitActor:
    """A Ray Data actor: restores the planned images of one batch and writes their outputs."""

    def __init__(self, output: str, run_id: str, storage_options: dict, max_pixels: int, threads: int,
                 output_format: str = "same", shard_rows: int = SHARD_ROWS,
                 shard_seconds: float = SHARD_SECONDS, max_fit_attempts: int = MAX_FIT_ATTEMPTS,
                 catalogue=None):
        import torch

        torch.set_num_threads(max(1, threads))
        self.output, self.run_id, self.output_format = output, run_id, output_format
        self.storage_options, self.max_pixels, self.max_fit_attempts = storage_options, max_pixels, max_fit_attempts
        self.node = _node_id()
        self.earlier_rows: dict[str, dict] = {}  # per earlier writer of this run: the rows it stored
        self.shards = results.ShardWriter(output, run_id, storage_options, rows=shard_rows, seconds=shard_seconds,
                                          catalogue=catalogue)
        # Also at the worker's exit: __del__ does not run while a reference cycle holds the actor
        # (seen: a run's last rows never written, the driver waiting for their shard).
        atexit.register(self.shards.flush_at_exit)

    def __del__(self):
        """Ray Data ends the actor when the dataset is done: write the rows still buffered."""
        shards = getattr(self, "shards", None)
        if shards is not None:
            shards.flush_at_exit()

    def __call__(self, batch: dict) -> dict:
        from ..core.packed import pack_key

        items = [self.start({k: batch[k][i] for k in batch}) for i in range(len(batch["image_id"]))]
        groups: dict = {}
        for item in items:
            try:
                self.claim(item)
                if item.recorded:
                    continue
                item.loaded = self.load(item)
                key = pack_key(item.loaded.observed, item.options)
            except Exception as error:  # noqa: BLE001  (a bad image is an error row)
                self.write(item, error=error)
                continue
            groups.setdefault(key or id(item), []).append(item)
        for group in groups.values():
            self.fit(group)
        out = [self.out_row(item) for item in items]
        return {k: [r[k] for r in out] for k in OUT_COLUMNS}

    def start(self, planned: dict) -> _Item:
        from ..core.prepare import resolve_device

        job = manifest.Job.from_row({k: plain_value(v) for k, v in planned.items()})
        options = replace(job.options, device=resolve_device(job.options.device))
        row = {"image_id": job.image_id, "uri": job.uri, "task": options.task, "status": "error",
               "attempt": int(planned["attempt"]), "config_hash": job.config_hash, "seed": options.seed,
               "run_id": self.run_id, "started_at": utc_now(), "device": options.device, "ray_node": self.node,
               "fit_starts": 0}
        return _Item(job, options, row, time.perf_counter())

    def claim(self, item: _Item) -> None:
        """Before anything is read: an earlier start of this run whose row its writer stored (a batch
        started again after its worker died) makes this one needless (``item.recorded``); the other
        earlier starts were lost with their worker: ``FitLost`` once they reach ``max_fit_attempts``,
        else this start is claimed."""
        job, row = item.job, item.row
        writers = claims.earlier(self.output, self.run_id, job.image_id, job.config_hash, self.storage_options)
        for writer in dict.fromkeys(writers):
            item.recorded = self.stored(writer).get((job.image_id, job.config_hash))
            if item.recorded:
                return
        row["fit_starts"] = len(writers)
        claims.check(job.image_id, len(writers), self.max_fit_attempts)
        claims.claim(self.output, self.run_id, job.image_id, job.config_hash, self.storage_options,
                     writer=self.shards.writer_id, node=self.node, started_at=row["started_at"].isoformat())
        row["fit_starts"] += 1

    def stored(self, writer: str) -> dict:
        """The output rows an earlier writer of this run stored, by (image_id, config_hash); read once."""
        if writer not in self.earlier_rows:
            columns = [c for c in OUT_COLUMNS if c != "shard"] + ["config_hash"]
            self.earlier_rows[writer] = results.writer_rows(self.output, self.run_id, writer, columns,
                                                            self.storage_options)
        return self.earlier_rows[writer]

    def load(self, item: _Item) -> Inputs:
        """The images of one row, decoded (and degraded, for evaluations), as ``restore`` takes them.
        The row's time limit covers the reading: the fit gets what is left of it."""
        from ..core.fit import FitTimeout
        from .inputs import load_inputs

        job, options = item.job, item.options
        item.row["preset"] = options.resolve().name
        started = time.monotonic()
        deadline = None if options.time_limit_s is None else started + options.time_limit_s
        try:
            inputs = load_inputs(job.uri, mask_uri=job.mask_uri, reference_uri=job.reference_uri,
                                 guide_uri=job.guide_uri, degradation=job.degradation,
                                 seed=options.seed if job.degradation_seed is None else job.degradation_seed,
                                 storage_options=self.storage_options, max_pixels=self.max_pixels, page=job.page,
                                 deadline=deadline)
        except storage.ReadTooSlow as error:
            raise FitTimeout(f"reading the inputs ran past the time limit of {options.time_limit_s:g} s: "
                             f"{error}") from None
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FitTimeout(f"reading the inputs took {time.monotonic() - started:.1f} s, past the time limit "
                                 f"of {options.time_limit_s:g} s")
            item.options = replace(options, time_limit_s=left)
        return inputs

    def fit(self, group: list[_Item]) -> None:
        """Fit a group (packed when it has several images), then write each image's outputs."""
        from ..core.fit import FitTimeout
        from ..core.packed import restore_many
        from ..core.restore import restore

        if len(group) > 1:
            try:
                packed = restore_many([{**item.inputs, "options": item.options} for item in group])
            except FitTimeout as error:  # same size, same preset: each alone would time out too
                for item in group:
                    self.write(item, error=error)
                return
            except Exception:  # noqa: BLE001  (fit them one by one: each failure is its own row)
                packed = None
            if packed is not None:
                for item, restored in zip(group, packed, strict=True):
                    self.write(item, restored=restored, packed=len(group))
                return
        for item in group:
            try:
                restored = restore(**item.inputs, options=item.options)
            except Exception as error:  # noqa: BLE001  (one bad image is an error row; the batch goes on)
                self.write(item, error=error)
                continue
            self.write(item, restored=restored)

    def write(self, item: _Item, *, restored=None, error: BaseException | None = None, packed: int = 1) -> None:
        """The restored image (PNG or TIFF, ``output_format``; with its metadata and provenance), the
        archive mask (``masks/<image_id>.png``), the degraded input of a row with a degradation
        (``degraded/<image_id>.png``) and the result row (``packed``: images in its fit)."""
        row, job = item.row, item.job
        if restored is not None:
            from ..core.encoding import encode

            try:
                fmt = batch_format(self.output_format, restored.picture.metadata.format)
                url = self.under("restored", f"{storage.safe_key(job.image_id)}{SUFFIX[fmt]}")
                storage.write_bytes(url, _encode(restored, fmt, item), self.storage_options)
                if restored.mask is not None:
                    mask_url = self.under("masks", f"{storage.safe_key(job.image_id)}.png")
                    storage.write_bytes(mask_url, encode(restored.mask, "png"), self.storage_options)
                    row["mask_output_uri"] = mask_url
                if job.degradation:
                    degraded_url = self.under("degraded", f"{storage.safe_key(job.image_id)}.png")
                    storage.write_bytes(degraded_url, encode(item.loaded.observed, "png"), self.storage_options)
                    row["degraded_uri"] = degraded_url
                row.update(item.loaded.truth_scores(restored.mask))
                summary = restored.summary()
                row.update({k: summary[k] for k in (*restored.metrics, "iterations", "best_iteration",
                                                    "stopped_early", "backtracks", "seconds", "stop_rule")})
                row.update(status="ok", output_uri=url, history=json.dumps(restored.fit.history), packed=packed)
            except Exception as failure:  # noqa: BLE001  (a failed write is an error row, not a lost batch)
                error = failure
        if error is not None:
            row["error"] = _describe(error)
        row["finished_at"] = utc_now()
        row.setdefault("seconds", time.perf_counter() - item.clock)
        extra = {name: value for name, value in job.extra.items() if name not in results.COLUMNS}
        row["shard"] = self.shards.add({**extra, **row})

    def under(self, *parts: str) -> str:
        return storage.under(self.output, *parts, storage_options=self.storage_options)

    @staticmethod
    def out_row(item: _Item) -> dict:
        if item.recorded:
            return {name: item.recorded[name] for name in OUT_COLUMNS}
        row = item.row
        return {"image_id": row["image_id"], "status": row["status"], "error": row.get("error"),
                "psnr": row.get("psnr"), "seconds": float(row["seconds"]), "device": row["device"],
                "shard": row["shard"], "ray_node": row["ray_node"], "fit_starts": row["fit_starts"]}


def _encode(restored, fmt: str, item: _Item) -> bytes:
    """The restored picture's bytes, with the provenance of its result row."""
    from ..core.encoding import encode
    from ..core.metadata import provenance

    record = provenance(task=item.options.task, preset=restored.preset.name, iterations=restored.fit.iterations,
                        seed=item.options.seed, config_hash=item.job.config_hash)
    return encode(restored.picture, fmt, record)


def _describe(error: BaseException) -> str:
    """A one-line error message for the results table (type and message, no traceback)."""
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    if os.environ.get("DIP_DEBUG"):
        text += " | " + "".join(traceback.format_exception(error)).replace("\n", " ")
    return text[:2000]


def _node_id() -> str | None:
    """The Ray node this actor runs on (hex), None outside Ray."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def plain_value(value):
    """numpy scalars from Ray Data rows to Python values."""
    if hasattr(value, "item") and not isinstance(value, (bytes, str)):
        return value.item()
    return value


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)

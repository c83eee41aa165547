"""``dip report``: a run's results as a summary (terminal, CSV, Markdown) and a self-contained HTML page.

1. Read the key columns of every result row and choose each image's latest attempt (the latest
   ``finished_at``, whatever its configuration; ties by ``attempt``), and the images the page
   shows (the first ``max_images`` done, and each group's first ``MAX_CURVES``).
2. Stream the rows in record batches, keeping the chosen ones without their ``history`` (only its
   best PSNR, the oracle, and the whole history of the images shown): memory grows with the
   images, not with the attempts or the histories.
3. Summarise per suite and task (``summary.summarize``) and write ``summary.csv``, ``summary.md``,
   ``report.html`` (``evaluation.html``; at most ``MAX_FAILURES`` failures listed), where images were
   fitted over several seeds ``seeds.csv`` (each image's mean and spread), and, where images failed,
   ``failures.csv`` with every failure, under the output prefix; print the table.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .. import storage
from ..batch import results
from .html import MAX_CURVES, View, render
from .summary import (
    NO_SUITE,
    gains,
    groups,
    oracle_psnr,
    per_image_seeds,
    print_summary,
    seeds_csv,
    summarize,
    to_csv,
    to_markdown,
)

MAX_FAILURES = 200  # failures listed in the HTML and Markdown (failures.csv has them all)
EXTRA = {"suite": pa.string(), "subset": pa.string(), "paper_psnr": pa.float64(),  # an evaluation's own columns
         "published_psnr": pa.float64(), "replicate_of": pa.string(), "replicate": pa.int64(),
         "crop": pa.int64()}
FAILURE_COLUMNS = ("image_id", "suite", "task", "attempt", "run_id", "uri", "error")
COLUMNS = (  # what the summary, the page and failures.csv read of each row (history apart)
    "image_id", "uri", "task", "preset", "status", "error", "output_uri", "mask_output_uri", "psnr", "ssim", "psnr_y",
    "psnr_input", "psnr_baseline", "psnr_y_baseline", "psnr_tv", "psnr_y_tv", "noise_sigma", "noise_sigma_true",
    "defect_fraction", "mask_precision", "mask_recall", "mask_iou", "iterations", "seconds", "device", "attempt",
    "seed", "run_id", *EXTRA)


@dataclass
class Latest:
    table: pa.Table  # one row per image, its latest attempt: every column but history, plus psnr_oracle
    histories: dict[str, str]  # image_id -> history (JSON) of the images the page shows
    done: dict  # (suite, task) -> ok images


def _schema(names) -> pa.Schema:
    return pa.schema([(n, results.COLUMNS.get(n) or EXTRA[n]) for n in names])


def read_latest(output: str, storage_options: dict | None = None, *, max_images: int = 60) -> Latest:
    """Steps 1 and 2: each image's latest row (sorted by suite and image id) and the shown histories."""
    files = results.list_files(output, storage_options)
    if not files.all:
        raise ValueError(f"no results under {storage.join(output, 'results')}: nothing to report")

    # 1. The latest attempt per image, and the images shown, from the key columns.
    keys = storage.retrying("read", output, lambda: results.dataset(
        files.all, storage_options, _schema(("image_id", "finished_at", "attempt", "status", "suite",
                                             "task"))).to_table(), storage_options)
    chosen = np.zeros(len(keys), dtype=bool)
    chosen[results.first_rows(keys, ["image_id"], [("finished_at", "descending"), ("attempt", "descending")])] = True
    shown = np.zeros(len(keys), dtype=bool)
    done = np.flatnonzero(chosen & pc.equal(keys["status"], "ok").fill_null(False).to_numpy(zero_copy_only=False))
    latest_done = keys.take(done).select(["suite", "image_id"])
    ordered = done[pc.sort_indices(pa.table({"suite": pc.fill_null(latest_done["suite"], NO_SUITE),
                                             "image_id": latest_done["image_id"]}),
                                   [("suite", "ascending"), ("image_id", "ascending")]).to_numpy()]
    shown[ordered[:max_images]] = True
    codes, names = groups(keys.take(ordered), subsets=False)  # each group's first MAX_CURVES, for its curves
    by_group = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[by_group], np.arange(len(names)))
    rank = np.empty(len(codes), dtype=np.int64)
    rank[by_group] = np.arange(len(codes)) - starts[codes[by_group]]
    shown[ordered[rank < MAX_CURVES]] = True
    counted = dict(zip(names, np.bincount(codes, minlength=len(names)).tolist(), strict=True))
    ids = keys["image_id"]
    del keys, latest_done

    # 2. Stream the rows: keep the chosen, without their history.
    every = results.dataset(files.all, storage_options, _schema([*COLUMNS, "history"]))
    kept, histories, position = [], {}, 0
    for batch in results.batches(every):
        results.check_order(batch, ids, position, output)
        window = slice(position, position + len(batch))
        position += len(batch)
        batch = pa.Table.from_batches([batch]).filter(pa.array(chosen[window]))
        history = batch["history"].to_pylist()
        scored = pc.is_valid(batch["psnr"]).to_numpy(zero_copy_only=False)
        oracle = [oracle_psnr(h) if s else None for h, s in zip(history, scored, strict=True)]
        for i in np.flatnonzero(shown[window][chosen[window]]):
            histories[batch["image_id"][int(i)].as_py()] = history[i]
        kept.append(batch.select(COLUMNS).append_column("psnr_oracle", pa.array(oracle, pa.float64())))
    if position != len(chosen):
        raise RuntimeError(f"the results under {output} changed while read ({len(chosen)} rows, then {position}): "
                           "report again")
    table = pa.concat_tables(kept)
    order = pc.sort_indices(pa.table({"suite": pc.fill_null(table["suite"], NO_SUITE), "image_id": table["image_id"]}),
                            [("suite", "ascending"), ("image_id", "ascending")])
    return Latest(table=table.take(order), histories=histories, done=counted)


def write_report(output: str, storage_options: dict | None = None, *, max_images: int = 60,
                 console=None) -> list[str]:
    """Read, summarise, print, and write the files under ``output``; returns their URLs. The HTML
    shows the first ``max_images`` images and the first ``MAX_FAILURES`` failures."""
    latest = read_latest(output, storage_options, max_images=max_images)
    table = latest.table
    summary = summarize(table)
    seeds = per_image_seeds(table)
    failed_rows = table.filter(pc.invert(pc.equal(table["status"], "ok").fill_null(False)))
    failures = failed_rows.slice(0, MAX_FAILURES).to_pylist()
    shown = [{**row, "history": latest.histories[row["image_id"]]}
             for row in table.filter(pc.is_in(table["image_id"], pa.array(list(latest.histories), pa.string())))
             .to_pylist()]
    print_summary(summary, len(table), failures, console)
    view = View(images=len(table), shown=shown, failures=failures, failed=len(failed_rows), gains=gains(table),
                done=latest.done)
    files = {
        "summary.csv": to_csv(summary).encode(),
        "summary.md": to_markdown(output, summary, len(table), failures, len(failed_rows), seeds).encode(),
        "report.html": render(output, summary, view, storage_options, max_images=max_images).encode(),
    }
    if seeds:
        files["seeds.csv"] = seeds_csv(seeds).encode()
    if len(failed_rows):
        buffer = io.BytesIO()
        pacsv.write_csv(failed_rows.select(list(FAILURE_COLUMNS)), buffer)
        files["failures.csv"] = buffer.getvalue()
    written = []
    for name, data in files.items():
        url = storage.under(output, name, storage_options=storage_options)
        storage.write_bytes(url, data, storage_options)
        written.append(url)
    return written

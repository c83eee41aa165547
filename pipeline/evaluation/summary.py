"""A run's results summarised: per suite and task, as a terminal table, CSV and Markdown.

``latest_rows`` keeps each image's latest attempt (the latest ``finished_at``, whatever its
configuration; ties by ``attempt``). ``summarize`` gives per suite and task: images ok/failed;
mean and median PSNR, psnr_y (super-resolution) and SSIM; each baseline's mean (the input,
bicubic or the input, the TV prior); the difference to the paper's figure (``paper_psnr``, on
the suite's paper metric); GPU- and CPU-seconds. Where the rows have them: the oracle's PSNR (the
best along each fit's history, which needs the reference), the mean iterations, the noise level's
relative error (σ̂ against the true grain) and the defect mask's precision, recall and IoU
(archive-synthetic, whose ``subset`` column, ``defects`` or ``clean``, splits its groups).

All PSNR figures are dB, SSIM in [0, 1]. Infinite values (an input equal to its reference, as in
the inpaint-samples suite) are left out of the means.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import statistics
from collections import defaultdict

from .suites import PAPER, PAPER_METRIC

METRICS = ("psnr", "psnr_y", "ssim")
BASELINES = ("psnr_input", "psnr_baseline", "psnr_y_baseline", "psnr_tv", "psnr_y_tv")
SUMMARY_COLUMNS = (
    "suite", "task", "images", "ok", "failed",
    *(f"{m}_{s}" for m in METRICS for s in ("mean", "median")),
    *(f"{b}_mean" for b in BASELINES),
    "paper_metric", "paper_psnr", "paper_delta", "gpu_seconds", "cpu_seconds",
    "psnr_oracle_mean", "iterations_mean", "sigma_error_mean", "mask_precision_mean", "mask_recall_mean",
    "mask_iou_mean", "defect_fraction_mean",
)  # fmt: skip
LABELS = {  # headings for the terminal and Markdown tables
    "psnr_mean": "PSNR", "psnr_median": "PSNR median", "psnr_y_mean": "PSNR-Y", "psnr_y_median": "PSNR-Y median",
    "ssim_mean": "SSIM", "ssim_median": "SSIM median", "psnr_input_mean": "input PSNR",
    "psnr_baseline_mean": "baseline PSNR", "psnr_y_baseline_mean": "baseline PSNR-Y", "psnr_tv_mean": "TV PSNR",
    "psnr_y_tv_mean": "TV PSNR-Y", "paper_psnr": "paper DIP", "paper_delta": "DIP - paper",
    "gpu_seconds": "GPU s", "cpu_seconds": "CPU s", "psnr_oracle_mean": "oracle PSNR",
    "iterations_mean": "iterations", "sigma_error_mean": "noise error", "mask_precision_mean": "mask precision",
    "mask_recall_mean": "mask recall", "mask_iou_mean": "mask IoU", "defect_fraction_mean": "masked share",
}
NOTE = ("PSNR in dB, the latest attempt of each image. Baseline: bicubic for super-resolution, the degraded "
        "input otherwise; TV: the TV prior with the same data term. 'DIP - paper' on the suite's paper metric "
        "(PSNR-Y, the paper's protocol, for super-resolution).")
NO_SUITE = "-"  # results of a plain ``dip run`` (no suite column)
_EPOCH = dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def latest_rows(table) -> list[dict]:
    """One row per image of a ``pyarrow.Table`` of results: the latest ``finished_at`` (attempts
    count per configuration, so the
    attempt number alone would prefer an old configuration's retry), ties by ``attempt``."""
    best: dict[str, tuple] = {}
    for row in table.to_pylist():
        key = (row.get("finished_at") or _EPOCH, row.get("attempt") or 0)
        if row["image_id"] not in best or key > best[row["image_id"]][0]:
            best[row["image_id"]] = (key, row)
    return sorted((row for _, row in best.values()), key=lambda r: (r.get("suite") or "", r["image_id"]))


def finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def paper_metric(suite: str, task: str) -> str:
    return PAPER_METRIC.get(suite.split("/")[0]) or ("psnr_y" if task == "sr" else "psnr")


def oracle_psnr(row: dict) -> float | None:
    """The best PSNR against the reference along a row's recorded history (None without one)."""
    values = finite(h.get("psnr_reference") for h in json.loads(row.get("history") or "[]"))
    return max(values) if values else None


def summarize(rows: list[dict]) -> list[dict]:
    """Per (suite, task), the figures of ``SUMMARY_COLUMNS`` (None where there is nothing to average)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        suite = row.get("suite") or NO_SUITE
        groups[(f"{suite}/{row['subset']}" if row.get("subset") else suite, row.get("task") or "?")].append(row)
    summary = []
    for (suite, task), members in sorted(groups.items()):
        ok = [r for r in members if r["status"] == "ok"]
        entry = {"suite": suite, "task": task, "images": len(members), "ok": len(ok), "failed": len(members) - len(ok)}
        for name in METRICS:
            values = finite(r.get(name) for r in ok)
            entry[f"{name}_mean"] = statistics.fmean(values) if values else None
            entry[f"{name}_median"] = statistics.median(values) if values else None
        for name in BASELINES:
            values = finite(r.get(name) for r in ok)
            entry[f"{name}_mean"] = statistics.fmean(values) if values else None
        metric = paper_metric(suite, task)
        papers = finite(r.get("paper_psnr") for r in members)
        mean = entry[f"{metric}_mean"]
        entry.update(paper_metric=metric, paper_psnr=papers[0] if papers else None,
                     paper_delta=mean - papers[0] if papers and mean is not None else None)
        extras = {
            "psnr_oracle_mean": [oracle_psnr(r) for r in ok],
            "iterations_mean": [r.get("iterations") for r in ok],
            "sigma_error_mean": [abs(r["noise_sigma"] / r["noise_sigma_true"] - 1) for r in ok
                                 if r.get("noise_sigma") is not None and r.get("noise_sigma_true")],
            **{f"{name}_mean": [r.get(name) for r in ok]
               for name in ("mask_precision", "mask_recall", "mask_iou", "defect_fraction")},
        }
        for column, values in extras.items():
            values = finite(values)
            entry[column] = statistics.fmean(values) if values else None
        seconds = [(r.get("device") or "", r.get("seconds") or 0.0) for r in members]
        entry["gpu_seconds"] = sum((s for device, s in seconds if device.startswith("cuda")), 0.0)
        entry["cpu_seconds"] = sum((s for device, s in seconds if device == "cpu"), 0.0)
        summary.append(entry)
    return summary


def paper_figures(suite: str) -> str:
    """The paper's figures for a suite as text: 'dip 29.90, bicubic 28.43, tv 28.86'."""
    return ", ".join(f"{name} {value:.2f}" for name, value in PAPER.get(suite, {}).items())


def shown_columns(summary: list[dict]) -> list[str]:
    """The summary columns worth showing: counts, and the figures some group has."""
    fixed = ["suite", "task", "ok", "failed"]
    figures = [c for c in SUMMARY_COLUMNS if c in LABELS and any(e.get(c) for e in summary)]
    return fixed + figures


def cell(entry: dict, column: str) -> str:
    value = entry.get(column)
    if value is None:
        return ""
    if column == "paper_delta":
        return f"{value:+.2f}"
    if column.startswith(("ssim", "mask_", "sigma_error", "defect_fraction")):
        return f"{value:.3f}"
    if column == "iterations_mean":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.1f}" if column.endswith("seconds") else f"{value:.2f}"
    return str(value)


def to_csv(summary: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for entry in summary:
        writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()})
    return buffer.getvalue()


def to_markdown(output: str, summary: list[dict], rows: list[dict]) -> str:
    columns = shown_columns(summary)
    lines = [f"# dip report: {output}", "",
             f"{len(rows)} images. {NOTE}", "",
             "| " + " | ".join(LABELS.get(c, c) for c in columns) + " |",
             "|" + "|".join("---" if c in ("suite", "task") else "---:" for c in columns) + "|"]
    lines += ["| " + " | ".join(cell(e, c) for c in columns) + " |" for e in summary]
    papers = [f"- {e['suite']}: {paper_figures(e['suite'])}" for e in summary if paper_figures(e["suite"])]
    if papers:
        lines += ["", "Paper figures (dB):", "", *dict.fromkeys(papers)]
    failures = [r for r in rows if r["status"] != "ok"]
    if failures:
        lines += ["", f"## Failures ({len(failures)})", ""]
        lines += [f"- `{r['image_id']}`: {(r.get('error') or '').replace('|', '/')[:300]}" for r in failures]
    return "\n".join(lines) + "\n"


def print_summary(summary: list[dict], rows: list[dict], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"{len(rows)} images, latest attempt each (PSNR dB)")  # one column per suite and task
    table.add_column("")
    for entry in summary:
        table.add_column(f"{entry['suite']}\n{entry['task']}", justify="right")
    for column in shown_columns(summary)[2:]:
        table.add_row(LABELS.get(column, column), *(cell(entry, column) for entry in summary))
    console.print(table)
    for row in [r for r in rows if r["status"] != "ok"][:20]:
        console.print(f"[red]failed[/red] {row['image_id']}: {(row.get('error') or '')[:200]}", markup=True,
                      highlight=False)

"""A run's results summarised: per suite and task, as a terminal table, CSV and Markdown.

``summarize`` takes an Arrow table of one row per image (``report.read_latest``: each image's
latest attempt) and gives per suite and task: images ok/failed;
mean and median PSNR, psnr_y (super-resolution) and SSIM; each baseline's mean (the input,
bicubic or the input, the TV prior); the difference to the paper's figure (``paper_psnr``, on
the suite's paper metric); GPU- and CPU-seconds. Where the rows have them: the oracle's PSNR (the
best along each fit's history, which needs the reference), the mean iterations, the noise level's
relative error (σ̂ against the true grain) and the defect mask's precision, recall and IoU
(archive-synthetic, whose ``subset`` column, ``defects`` or ``clean``, splits its groups). Over
several seeds (rows with ``replicate_of``, ``dip evaluate --seeds K``): the seeds, the mean over images
of each image's spread (the standard deviation over its seeds of the paper metric) and the spread of the
suite's mean over the seeds; ``per_image_seeds`` gives each image's mean, spread and range.

All PSNR figures are dB, SSIM in [0, 1]. Infinite values (an input equal to its reference, as in
the inpaint-samples suite) are left out of the means.
"""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .suites import PAPER, PAPER_METRIC, PAPER_PRESETS

METRICS = ("psnr", "psnr_y", "ssim")
BASELINES = ("psnr_input", "psnr_baseline", "psnr_y_baseline", "psnr_tv", "psnr_y_tv")
SUMMARY_COLUMNS = (
    "suite", "task", "images", "ok", "failed",
    *(f"{m}_{s}" for m in METRICS for s in ("mean", "median")),
    *(f"{b}_mean" for b in BASELINES),
    "paper_metric", "paper_psnr", "paper_delta", "paper_note", "gpu_seconds", "cpu_seconds",
    "psnr_oracle_mean", "iterations_mean", "sigma_error_mean", "mask_precision_mean", "mask_recall_mean",
    "mask_iou_mean", "defect_fraction_mean", "published_psnr_mean", "seeds", "seed_std_mean", "suite_seed_std",
)  # fmt: skip
LABELS = {  # headings for the terminal and Markdown tables
    "psnr_mean": "PSNR", "psnr_median": "PSNR median", "psnr_y_mean": "PSNR-Y", "psnr_y_median": "PSNR-Y median",
    "ssim_mean": "SSIM", "ssim_median": "SSIM median", "psnr_input_mean": "input PSNR",
    "psnr_baseline_mean": "baseline PSNR", "psnr_y_baseline_mean": "baseline PSNR-Y", "psnr_tv_mean": "TV PSNR",
    "psnr_y_tv_mean": "TV PSNR-Y", "paper_psnr": "paper DIP", "paper_delta": "DIP - paper",
    "paper_note": "vs paper", "gpu_seconds": "GPU s", "cpu_seconds": "CPU s", "psnr_oracle_mean": "oracle PSNR",
    "iterations_mean": "iterations", "sigma_error_mean": "noise error", "mask_precision_mean": "mask precision",
    "mask_recall_mean": "mask recall", "mask_iou_mean": "mask IoU", "defect_fraction_mean": "masked share",
    "published_psnr_mean": "CBM3D (published)", "seeds": "seeds", "seed_std_mean": "spread per image (std)",
    "suite_seed_std": "spread of the mean (std)",
}
SEED_COLUMNS = ("suite", "task", "image", "metric", "seeds", "mean", "std", "min", "max")
NOTE = ("PSNR in dB, the latest attempt of each image. Baseline: bicubic for super-resolution, the degraded "
        "input otherwise; TV: the TV prior with the same data term. 'DIP - paper' on the suite's paper metric "
        "(PSNR-Y, the paper's protocol, for super-resolution); 'vs paper' says where a run differs from the paper's "
        "(another preset, crops).")
NO_SUITE = ""  # results of a plain ``dip run`` (no suite column): no label
MAX_SEED_ROWS = 200  # images over seeds listed in summary.md (seeds.csv has them all)


def finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def paper_metric(suite: str, task: str) -> str:
    return PAPER_METRIC.get(suite.split("/")[0]) or ("psnr_y" if task == "sr" else "psnr")


def oracle_psnr(history: str | None) -> float | None:
    """The best PSNR against the reference along a recorded history (JSON; None without one)."""
    values = finite(h.get("psnr_reference") for h in json.loads(history or "[]"))
    return max(values) if values else None


SEP = "\x1f"  # between suite and task in a group's code


def groups(table: pa.Table, *, subsets: bool = True) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Per row, the index of its group in the returned sorted (suite, task) list; the suite label
    is ``suite/subset`` where a subset is given (``subsets``). Vectorised: no Python object per row."""
    suites = pc.fill_null(column(table, "suite", pa.string()), NO_SUITE)
    if subsets:
        subset = column(table, "subset", pa.string())
        suites = pc.if_else(pc.is_valid(subset), pc.binary_join_element_wise(suites, subset, "/"), suites)
    tasks = pc.fill_null(column(table, "task", pa.string()), "?")
    encoded = pc.binary_join_element_wise(suites, tasks, SEP).dictionary_encode()
    names = [tuple(name.split(SEP, 1)) for name in encoded.dictionary.to_pylist()]
    order = sorted(range(len(names)), key=names.__getitem__)
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)] if len(names) else np.zeros(0, dtype=np.int64)
    return codes, [names[i] for i in order]


def column(table: pa.Table, name: str, kind: pa.DataType) -> pa.Array:
    """A column as one array of ``kind``; all nulls where the table lacks it."""
    if name in table.column_names:
        return table[name].combine_chunks().cast(kind)
    return pa.nulls(len(table), kind)


def values(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 (nulls as NaN; a column the table lacks: all NaN)."""
    return column(table, name, pa.float64()).to_numpy(zero_copy_only=False)


def _mean(found: np.ndarray) -> float | None:
    found = found[np.isfinite(found)]
    return float(found.mean()) if len(found) else None


AVERAGED = {"psnr_oracle_mean": "psnr_oracle", "iterations_mean": "iterations", "published_psnr_mean": "published_psnr",
            **{f"{n}_mean": n for n in ("mask_precision", "mask_recall", "mask_iou", "defect_fraction")}}


def summarize(table: pa.Table) -> list[dict]:
    """Per (suite, task) of a table of one row per image, the figures of ``SUMMARY_COLUMNS`` (None
    where there is nothing to average). The table's ``psnr_oracle`` column holds each fit's oracle."""
    codes, names = groups(table)
    ok = pc.equal(table["status"], "ok").fill_null(False).to_numpy(zero_copy_only=False)
    numbers = {name: values(table, name) for name in (*METRICS, *BASELINES, *AVERAGED.values(), "paper_psnr",
                                                      "noise_sigma", "noise_sigma_true", "seconds")}
    devices = pc.fill_null(column(table, "device", pa.string()), "")
    on_gpu = pc.starts_with(devices, "cuda").to_numpy(zero_copy_only=False)
    on_cpu = pc.equal(devices, "cpu").to_numpy(zero_copy_only=False)
    seconds = np.nan_to_num(numbers["seconds"])
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma_error = np.where(numbers["noise_sigma_true"] > 0,
                               np.abs(numbers["noise_sigma"] / numbers["noise_sigma_true"] - 1), np.nan)
    summary = []
    for code, (suite, task) in enumerate(names):
        member = codes == code
        done = member & ok
        entry = {"suite": suite, "task": task, "images": int(member.sum()), "ok": int(done.sum()),
                 "failed": int(member.sum() - done.sum())}
        for name in METRICS:
            found = numbers[name][done]
            found = found[np.isfinite(found)]
            entry[f"{name}_mean"] = float(found.mean()) if len(found) else None
            entry[f"{name}_median"] = float(np.median(found)) if len(found) else None
        for name in BASELINES:
            entry[f"{name}_mean"] = _mean(numbers[name][done])
        metric = paper_metric(suite, task)
        papers = finite(numbers["paper_psnr"][member][:1000])
        mean = entry[f"{metric}_mean"]
        entry.update(paper_metric=metric, paper_psnr=papers[0] if papers else None,
                     paper_delta=mean - papers[0] if papers and mean is not None else None,
                     paper_note=comparability(suite, table, member) if papers else None)
        entry["sigma_error_mean"] = _mean(sigma_error[done])
        for summary_column, name in AVERAGED.items():
            entry[summary_column] = _mean(numbers[name][done])
        entry["gpu_seconds"] = float(seconds[member & on_gpu].sum())
        entry["cpu_seconds"] = float(seconds[member & on_cpu].sum())
        entry.update(seed_spread(table, done, metric))
        summary.append(entry)
    return summary


def _replicates(table: pa.Table, rows: np.ndarray, metric: str):
    """Of the ``rows`` (a mask) that are replicates with a finite metric: (image index per row, image
    names, replicate per row, metric values); None where there are none."""
    of = column(table, "replicate_of", pa.string())
    keep = rows & pc.is_valid(of).to_numpy(zero_copy_only=False) & np.isfinite(values(table, metric))
    if not keep.any():
        return None
    names, index = np.unique(np.asarray(of.to_numpy(zero_copy_only=False), dtype=object)[keep].astype(str),
                             return_inverse=True)
    return index, names, values(table, "replicate")[keep], values(table, metric)[keep]


def seed_spread(table: pa.Table, rows: np.ndarray, metric: str) -> dict:
    """The group's figures over seeds (``seeds``, ``seed_std_mean``, ``suite_seed_std``; None each
    where the rows are no replicates): standard deviations with one degree of freedom, dB."""
    found = _replicates(table, rows, metric)
    if found is None:
        return {"seeds": None, "seed_std_mean": None, "suite_seed_std": None}
    index, names, replicate, value = found
    stds = [value[index == i].std(ddof=1) for i in range(len(names)) if (index == i).sum() > 1]
    means = [value[replicate == k].mean() for k in np.unique(replicate)]
    return {"seeds": int(len(np.unique(replicate))), "seed_std_mean": float(np.mean(stds)) if stds else None,
            "suite_seed_std": float(np.std(means, ddof=1)) if len(means) > 1 else None}


def per_image_seeds(table: pa.Table) -> list[dict]:
    """Per suite, task and image evaluated over several seeds: the paper metric's mean, standard
    deviation (one degree of freedom), minimum and maximum over the image's ok replicates."""
    codes, names = groups(table)
    ok = pc.equal(table["status"], "ok").fill_null(False).to_numpy(zero_copy_only=False)
    out = []
    for code, (suite, task) in enumerate(names):
        metric = paper_metric(suite, task)
        found = _replicates(table, ok & (codes == code), metric)
        if found is None:
            continue
        index, images, _, value = found
        for i, image in enumerate(images):
            mine = value[index == i]
            out.append({"suite": suite, "task": task, "image": image, "metric": metric, "seeds": len(mine),
                        "mean": float(mine.mean()), "std": float(mine.std(ddof=1)) if len(mine) > 1 else None,
                        "min": float(mine.min()), "max": float(mine.max())})
    return out


def seeds_csv(rows: list[dict]) -> str:
    return to_csv(rows, SEED_COLUMNS)


def comparability(suite: str, table: pa.Table, member: np.ndarray) -> str | None:
    """None where a group ran as the paper did, else why it is "not comparable with the paper": a
    preset other than the suite's paper presets (``PAPER_PRESETS``), crops (``--crop``)."""
    presets = sorted(set(np.asarray(column(table, "preset", pa.string()).to_numpy(zero_copy_only=False),
                                    dtype=object)[member]) - {None} - set(PAPER_PRESETS.get(suite, ())))
    crops = sorted({int(c) for c in values(table, "crop")[member] if math.isfinite(c)})
    reasons = ([f"preset {', '.join(presets)}"] if presets else []) + \
        ([f"{'/'.join(f'{c}x{c}' for c in crops)} crops"] if crops else [])
    return f"not comparable with the paper ({'; '.join(reasons)})" if reasons else None


def gains(table: pa.Table) -> dict[tuple[str, str], np.ndarray]:
    """Per (suite, task): the ok images' gains over the baseline (dB) on the suite's paper metric
    (psnr - psnr_baseline; psnr_y - psnr_y_baseline for super-resolution), finite ones only."""
    codes, names = groups(table, subsets=False)
    ok = pc.equal(table["status"], "ok").fill_null(False).to_numpy(zero_copy_only=False)
    found = {}
    for code, (suite, task) in enumerate(names):
        metric = paper_metric(suite, task)
        baseline = "psnr_y_baseline" if metric == "psnr_y" else "psnr_baseline"
        member = ok & (codes == code)
        gain = values(table, metric)[member] - values(table, baseline)[member]
        gain = gain[np.isfinite(gain)]
        if len(gain):
            found[(suite, task)] = gain
    return found


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
    if column in ("iterations_mean", "seeds"):
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.1f}" if column.endswith("seconds") else f"{value:.2f}"
    return str(value)


def to_csv(summary: list[dict], columns: tuple[str, ...] = SUMMARY_COLUMNS) -> str:
    """Rows as CSV with ``columns`` (floats to 4 decimals)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for entry in summary:
        writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()})
    return buffer.getvalue()


def to_markdown(output: str, summary: list[dict], images: int, failures: list[dict], failed: int,
                seeds: list[dict] | None = None) -> str:
    """The summary table, the paper's figures, each image over its seeds (``per_image_seeds``, the
    first ``MAX_SEED_ROWS``) and the failures (``failures``: the first of ``failed``)."""
    columns = shown_columns(summary)
    lines = [f"# dip report: {output}", "",
             f"{images} images. {NOTE}", "",
             "| " + " | ".join(LABELS.get(c, c) for c in columns) + " |",
             "|" + "|".join("---" if c in ("suite", "task") else "---:" for c in columns) + "|"]
    lines += ["| " + " | ".join(cell(e, c) for c in columns) + " |" for e in summary]
    papers = [f"- {e['suite']}: {paper_figures(e['suite'])}" for e in summary if paper_figures(e["suite"])]
    if papers:
        lines += ["", "Paper figures (dB):", "", *dict.fromkeys(papers)]
    if seeds:
        more = f" (the first {MAX_SEED_ROWS}, all in seeds.csv)" if len(seeds) > MAX_SEED_ROWS else ""
        lines += ["", f"## Over seeds{more}", "", "| suite | task | image | metric | seeds | mean | std | min | max |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['suite']} | {r['task']} | {r['image']} | {r['metric']} | {r['seeds']} | {r['mean']:.2f} | "
                  + ("" if r["std"] is None else f"{r['std']:.2f}") + f" | {r['min']:.2f} | {r['max']:.2f} |"
                  for r in seeds[:MAX_SEED_ROWS]]
    if failed:
        more = f"; the first {len(failures)}, all in failures.csv" if failed > len(failures) else ""
        lines += ["", f"## Failures ({failed}{more})", ""]
        lines += [f"- `{r['image_id']}`: {(r.get('error') or '').replace('|', '/')[:300]}" for r in failures]
    return "\n".join(lines) + "\n"


def print_summary(summary: list[dict], images: int, failures: list[dict], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"{images} images, latest attempt each (PSNR dB)")  # one column per suite and task
    table.add_column("")
    for entry in summary:
        table.add_column(f"{entry['suite']}\n{entry['task']}", justify="right")
    for column in shown_columns(summary)[2:]:
        table.add_row(LABELS.get(column, column), *(cell(entry, column) for entry in summary))
    console.print(table)
    for row in failures[:20]:
        console.print(f"[red]failed[/red] {row['image_id']}: {(row.get('error') or '')[:200]}", markup=True,
                      highlight=False)

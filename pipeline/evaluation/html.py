"""The self-contained ``report.html`` of ``dip report``: tables, thumbnails and plots in one file.

Every image is embedded as a base64 PNG data URI, so the page opens anywhere (no network, no
side files). Per image: a strip degraded | restored | reference (archive rows: degraded | defect mask | restored
| reference). The degraded input is what the
fit saw, rebuilt from the run's plan (``runs/<run_id>.plan.parquet``): the file itself, times
the mask for inpainting, or ``synthesize(clean, degradation, seed)`` for rows with a degradation.
Plots (matplotlib, Agg): PSNR against iteration from each row's ``history``, and a histogram of
the gains over the baseline (on the suite's paper metric: PSNR-Y for super-resolution). A small
script marks ``<body data-images-loaded="N" data-images-total="M">`` once the page has loaded, for
headless-browser checks.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field

from .. import storage
from .summary import LABELS, NO_SUITE, NOTE, cell, paper_figures, paper_metric, shown_columns

THUMB = 192  # thumbnail size, pixels on the long side
MAX_CURVES = 12  # lines per PSNR-versus-iteration plot
ARCHIVE_METRICS = (("noise_sigma", ".1f"), ("noise_sigma_true", ".1f"), ("defect_fraction", ".4f"),
                   ("mask_precision", ".2f"), ("mask_recall", ".2f"))



@dataclass
class View:
    """What the page shows of a run: the rows are dicts of result columns (``history`` included)."""

    images: int  # images reported (one row each: the latest attempt)
    shown: list[dict]  # ok rows in (suite, image_id) order: the first max_images, then each group's first MAX_CURVES
    failures: list[dict]  # the first failures
    failed: int  # all of them
    gains: dict  # (suite, task) -> the gains over the baseline (dB), for the histogram
    done: dict = field(default_factory=dict)  # (suite, task) -> ok images


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; }
table { border-collapse: collapse; font-size: 12px; } .plots { display: flex; flex-wrap: wrap; gap: 12px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
.image { margin: 16px 0; } .image h3 { font-size: 14px; margin: 4px 0; }
.strip { display: flex; gap: 8px; } figure { margin: 0; text-align: center; font-size: 12px; }
figure img { height: 192px; image-rendering: pixelated; border: 1px solid #ddd; }
.missing { width: 192px; height: 192px; display: flex; align-items: center; justify-content: center;
  background: #f6f6f6; color: #888; font-size: 11px; padding: 4px; box-sizing: border-box; }
.note { color: #666; font-size: 12px; } .error { color: #a00; }
"""

LOADED_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", String(loaded));
  document.body.setAttribute("data-images-total", String(images.length));
});
"""


def render(output: str, summary: list[dict], view: View, storage_options: dict | None = None,
           *, max_images: int = 60) -> str:
    """The whole page as one HTML string."""

    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>dip report: {e(output)}</title>",
             f"<style>{STYLE}</style><script>{LOADED_SCRIPT}</script></head><body>",
             f"<h1>dip report: {e(output)}</h1>",
             (f"<p class='note'>{view.images} images; generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. "
              f"{e(NOTE)}</p>")]

    # 1. The summary table.
    columns = shown_columns(summary)
    head = "".join(f"<th class='{'text' if c in ('suite', 'task') else ''}'>{e(LABELS.get(c, c))}</th>"
                   for c in columns)
    body = "".join("<tr>" + "".join(f"<td class='{'text' if c in ('suite', 'task') else ''}'>{e(cell(s, c))}</td>"
                                    for c in columns) + "</tr>" for s in summary)
    parts.append(f"<h2>Summary</h2><table><tr>{head}</tr>{body}</table>")
    papers = dict.fromkeys(f"{s['suite']}: {paper_figures(s['suite'])}" for s in summary if paper_figures(s["suite"]))
    if papers:
        parts.append("<p class='note'>The paper's figures (dB): " + "; ".join(e(p) for p in papers) + ".</p>")

    # 2. Plots.
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in view.shown:
        groups[(row.get("suite") or NO_SUITE, row.get("task") or "?")].append(row)
    parts.append("<h2>PSNR against iteration, and the gain over the baseline</h2><div class='plots'>")
    for (suite, task), members in sorted(groups.items()):
        label = " / ".join(filter(None, (suite, task)))  # a plain run's rows have no suite
        png = curves_png(label, members[:MAX_CURVES], view.done.get((suite, task), len(members)))
        parts.append(_img(png, f"PSNR curves {label}", width=480) if png else
                     f"<p class='note'>{e(label)}: no history recorded.</p>")
    gains = histogram_png(view.gains)
    parts.append(_img(gains, "PSNR gains", width=480) if gains else "<p class='note'>No image has both a PSNR and "
                 "a finite baseline PSNR.</p>")
    parts.append("</div>")

    # 3. Failures.
    failures = view.failures
    if failures:
        more = (f"<p class='note'>The first {len(failures)} of {view.failed}; failures.csv beside this page lists "
                "them all.</p>" if view.failed > len(failures) else "")
        parts.append(f"<h2>Failures ({view.failed})</h2>{more}<table><tr><th class='text'>image</th><th class='text'>"
                     "suite</th><th>attempt</th><th class='text'>error</th></tr>")
        parts += [f"<tr><td class='text'>{e(r['image_id'])}</td><td class='text'>{e(r.get('suite') or '')}</td>"
                  f"<td>{r.get('attempt') or ''}</td><td class='text error'>{e(r.get('error') or '')}</td></tr>"
                  for r in failures]
        parts.append("</table>")

    # 4. One strip per image: degraded | restored | reference.
    done = sum(view.done.values()) or len(view.shown)
    parts.append("<h2>Images</h2><p class='note'>degraded (what the fit saw) | restored | reference"
                 + (f"; the first {max_images} of {done}" if done > max_images else "") + ".</p>")
    strips = view.shown[:max_images]
    plans = _plans(output, strips, storage_options)
    for row in strips:
        parts.append(_image_strip(output, row, plans, storage_options))
    parts.append("</body></html>")
    return "\n".join(parts)


def _image_strip(output: str, row: dict, plans: dict, storage_options: dict | None) -> str:
    from ..batch.inputs import read_picture

    e = html.escape
    degraded = reference = restored = None
    notes = []
    try:
        degraded, reference = _inputs(row, plans.get(row.get("run_id"), {}), storage_options)
    except (OSError, ValueError) as error:
        notes.append(f"inputs unavailable: {error}")
    try:
        restored = read_picture(row["output_uri"], storage_options).pixels if row.get("output_uri") else None
    except (OSError, ValueError) as error:
        notes.append(f"restored image unavailable: {error}")
    shown = [(degraded, "degraded"), (restored, "restored"), (reference, "reference")]
    if row.get("mask_output_uri"):  # archive: the defects found (black = filled)
        try:
            shown.insert(1, (read_picture(row["mask_output_uri"], storage_options).pixels, "defect mask"))
        except (OSError, ValueError) as error:
            notes.append(f"mask unavailable: {error}")
    figures = "".join(_figure(pixels, label) for pixels, label in shown)
    metrics = ", ".join(f"{name} {row[name]:.2f}" for name in ("psnr", "psnr_y", "psnr_input", "psnr_baseline",
                                                                "psnr_y_baseline", "psnr_tv", "psnr_y_tv")
                        if row.get(name) is not None and math.isfinite(row[name]))
    if row.get("ssim") is not None:
        metrics += f", ssim {row['ssim']:.3f}"
    metrics += "".join(f", {name} {row[name]:{form}}" for name, form in ARCHIVE_METRICS if row.get(name) is not None)
    timing = f"{row.get('iterations') or 0} iterations in {row.get('seconds') or 0:.1f} s on {row.get('device') or '?'}"
    return (f"<div class='image'><h3>{e(row['image_id'])} <span class='note'>({e(row.get('suite') or '-')}, "
            f"{e(row.get('task') or '')}, {e(row.get('preset') or '')})</span></h3>"
            f"<div class='note'>{e(metrics)}; {e(timing)}</div><div class='strip'>{figures}</div>"
            + "".join(f"<div class='note error'>{e(n)}</div>" for n in notes) + "</div>")


PLAN_COLUMNS = ("image_id", "uri", "mask_uri", "reference_uri", "degradation")


def _plans(output: str, rows: list[dict], storage_options: dict | None) -> dict[str, dict]:
    """Per run: the planned rows of the images shown, read column-pruned and filtered by image id
    from ``runs/<run_id>.plan.parquet`` (a million-row plan is never read whole); {} where it is gone."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    wanted: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if row.get("run_id"):
            wanted[row["run_id"]].append(row["image_id"])
    plans = {}
    for run_id, ids in wanted.items():
        url = storage.join(output, "runs", f"{run_id}.plan.parquet")
        if not storage.exists(url, storage_options):
            plans[run_id] = {}
            continue
        fs, path = storage.arrow_filesystem(url, storage_options)
        table = storage.retrying("read", url, lambda p=path, f=fs, i=ids: pads.dataset(p, filesystem=f).to_table(
            columns=list(PLAN_COLUMNS), filter=pc.field("image_id").isin(i)), storage_options)
        plans[run_id] = {r["image_id"]: r for r in table.to_pylist()}
    return plans


def _inputs(row: dict, plan: dict, storage_options: dict | None):
    """(degraded, reference) pixels [1, C, H, W] in [0, 1] of a row, each None where unknown."""
    from ..batch.inputs import load_inputs

    planned = plan.get(row["image_id"])
    if planned is None:
        return None, None
    inputs = load_inputs(planned["uri"], mask_uri=planned.get("mask_uri"), reference_uri=planned.get("reference_uri"),
                         degradation=planned.get("degradation"), seed=int(row["seed"]), storage_options=storage_options)
    observed, mask, reference = inputs.observed.pixels, inputs.mask, inputs.reference
    if mask is not None and not planned.get("degradation"):  # a made mask is already applied
        observed = observed * (mask.pixels.mean(dim=1, keepdim=True) > 0.5)
    return observed, reference.pixels if reference is not None else None


def _figure(pixels, label: str) -> str:
    if pixels is None:
        return (f"<figure><div class='missing'>no {html.escape(label)} image</div>"
                f"<figcaption>{label}</figcaption></figure>")
    return f"<figure>{_img(thumbnail_png(pixels), label)}<figcaption>{label}</figcaption></figure>"


def _img(png: bytes, alt: str, width: int | None = None) -> str:
    size = f" style='width:{width}px;height:auto'" if width else ""
    return f"<img alt='{html.escape(alt)}'{size} src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def thumbnail_png(pixels) -> bytes:
    """[1, C, H, W] in [0, 1] as PNG bytes, scaled to THUMB pixels on the long side (nearest when
    enlarging, so that a low-resolution input shows its pixels)."""
    from PIL import Image

    from ..core.images import to_uint8

    array = to_uint8(pixels)  # (H, W, C)
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    scale = THUMB / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def curves_png(title: str, rows: list[dict], total: int | None = None) -> bytes | None:
    """PSNR against the reference (else against the observation) per image, from ``history`` (the
    first ``MAX_CURVES`` rows; ``total``: the group's images, for the title)."""
    from matplotlib.figure import Figure  # no pyplot: an Agg canvas, no global state

    curves = []
    for row in rows:
        history = json.loads(row.get("history") or "[]")
        key = "psnr_reference" if any("psnr_reference" in h for h in history) else "psnr_observation"
        points = [(h["iteration"], h[key]) for h in history if h.get(key) is not None and math.isfinite(h[key])]
        if points:
            curves.append((row["image_id"], key, points))
    if not curves:
        return None
    fig = Figure(figsize=(4.8, 3.2))
    ax = fig.subplots()
    for image_id, _, points in curves[:MAX_CURVES]:
        ax.plot(*zip(*points, strict=True), marker=".", label=image_id)
    against = {key for _, key, _ in curves}
    versus = ("reference" if against == {"psnr_reference"} else
              "observation" if against == {"psnr_observation"} else "ref/obs")
    total = max(total or 0, len(curves))
    ax.set(title=title + (f" (first {MAX_CURVES} of {total})" if total > MAX_CURVES else ""),
           xlabel="iteration", ylabel="PSNR (dB) vs " + versus)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    return _figure_png(fig)


def histogram_png(gains: dict) -> bytes | None:
    """Histogram of the gains over the baseline (dB) of the ok images, on each suite's paper metric,
    stacked per suite and task (``gains``: (suite, task) -> values, as ``summary.gains`` gives)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not gains:
        return None
    labels = [f"{suite} / {task}: {paper_metric(suite, task)} ({len(values)})"
              for (suite, task), values in sorted(gains.items())]
    values = [values for _, values in sorted(gains.items())]
    fig = Figure(figsize=(4.8, 3.2))
    ax = fig.subplots()
    ax.hist(values, bins=min(30, max(5, sum(map(len, values)))), stacked=True, label=labels)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title="Gain over the baseline", xlabel="PSNR - baseline PSNR (dB)", ylabel="images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _figure_png(fig)

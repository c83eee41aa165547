"""``dip report``: a run's results as a summary (terminal, CSV, Markdown) and a self-contained HTML page.

1. Read every result row under ``<output>/results/`` and keep each image's latest attempt
   (``summary.latest_rows``).
2. Summarise per suite and task (``summary.summarize``).
3. Write ``summary.csv``, ``summary.md`` and ``report.html`` (``evaluation.html``) under the
   output prefix, and print the table.
"""

from __future__ import annotations

from .. import storage
from ..batch import results
from .html import render
from .summary import latest_rows, print_summary, summarize, to_csv, to_markdown


def write_report(output: str, storage_options: dict | None = None, *, max_images: int = 60,
                 console=None) -> list[str]:
    """Read, summarise, print, and write the three files under ``output``; returns their URLs.
    The HTML shows the first ``max_images`` images (failures are all listed)."""
    rows = latest_rows(results.read_table(output, storage_options))
    if not rows:
        raise ValueError(f"no results under {storage.join(output, 'results')}: nothing to report")
    summary = summarize(rows)
    print_summary(summary, rows, console)
    files = {
        "summary.csv": to_csv(summary).encode(),
        "summary.md": to_markdown(output, summary, rows).encode(),
        "report.html": render(output, summary, rows, storage_options, max_images=max_images).encode(),
    }
    written = []
    for name, data in files.items():
        url = storage.join(output, name)
        storage.write_bytes(url, data, storage_options)
        written.append(url)
    return written

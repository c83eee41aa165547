"""The live progress bar and the summary table of ``dip run`` (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

SUMMARY_ROWS = 50  # images listed in the final table; failures are always listed first


class RunProgress:
    """done/total, rate, ETA and errors while a run goes; a table once it ends."""

    def __init__(self, quiet: bool = False, console: Console | None = None, file=None):
        self.console = console or (Console(file=file) if file is not None else Console(stderr=True))
        self.quiet = quiet
        self.errors = 0
        self.progress = Progress(
            TextColumn("[bold]fitting"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("errors: {task.fields[errors]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, disable=quiet,
        )
        self.task = None

    def __enter__(self) -> "RunProgress":
        return self  # the bar is drawn once there is something to fit (start)

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.progress.__exit__(*exc)

    def start(self, summary) -> None:
        todo = summary.total - summary.skipped
        for warning in summary.warnings:  # shown even with --quiet
            self.console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
        if not self.quiet:
            self.console.print(f"run {summary.run_id}: {summary.total} images, {summary.skipped} already done, "
                               + (f"{todo} to fit" if todo else "nothing to fit"))
        if todo:  # no bar for a run with nothing to do
            self.progress.__enter__()
            self.task = self.progress.add_task("fit", total=todo, rate="", errors=0)

    def advance(self, row: dict) -> None:
        self.errors += row["status"] != "ok"
        self.progress.advance(self.task)
        task = self.progress.tasks[self.task]
        rate = f"{task.completed / task.elapsed * 3600:.0f} img/h" if task.elapsed else ""
        self.progress.update(self.task, errors=self.errors, rate=rate)

    def retract(self, count: int) -> None:
        """``count`` results went with a lost node (their shards never came): off the bar, fitted again."""
        self.progress.advance(self.task, -count)
        self.console.print(f"{count} result(s) were lost with their node; fitting them again", highlight=False)

    def print_summary(self, summary) -> None:
        rows = sorted(summary.rows, key=lambda r: (r["status"] == "ok", r["image_id"]))
        table = Table(title=f"run {summary.run_id}")
        for column in ("image", "status", "PSNR dB", "seconds", "device", "error"):
            table.add_column(column, justify="right" if column in ("PSNR dB", "seconds") else "left")
        for row in rows[:SUMMARY_ROWS]:
            psnr = row.get("psnr")
            table.add_row(row["image_id"], "[green]ok" if row["status"] == "ok" else "[red]error",
                          "" if psnr is None else f"{psnr:.2f}", f"{row['seconds']:.1f}", row.get("device") or "",
                          (row.get("error") or "")[:120])
        out = Console()
        if rows:
            out.print(table)
        shown = min(len(rows), SUMMARY_ROWS)
        if summary.ok + summary.failed > shown:
            out.print(f"... {summary.ok + summary.failed - shown} more images (see the results table)")
        retried = f"; fits retried: {summary.retried} (a worker or node lost)" if summary.retried else ""
        out.print(f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped (already done), "
                  f"{summary.total} in the manifest; {summary.seconds:.1f} s{retried}")
        if summary.unrecorded:
            out.print(f"{summary.unrecorded} results were lost with their node: rerun the same command to fit them")

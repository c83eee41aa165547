"""A 12 MP archive scan restored on the CPU: wall time, peak memory and tiles, under two budgets.

    python -m benchmarks.scan_memory [--width 4000 --height 3000 --iterations 3]

1. Makes a synthetic 16-bit RGB TIFF scan in a temporary folder (seeded: a colour gradient, a
   texture of crossed sines, film grain, and dark and bright dust specks).
2. Runs ``dip restore scan.tif -o out.tif --task archive --preset cpu-small --iterations 3 --quiet
   --json`` as a child process with the default budget (the CPU's MemAvailable) and with
   ``--memory-budget-gb 4``. Each child's peak resident memory comes from the kernel
   (``os.wait4``'s ru_maxrss: exact, no polling); the tile count from its JSON. A child running
   longer than ``--timeout`` seconds is stopped and recorded as such.
3. Also measures the peak memory of a child that only imports torch and the restore module: the
   interpreter's share of each peak, which an explicit budget counts too.

Linux carries a process's peak RSS across exec, so a child's ru_maxrss is at least its parent's at
the fork: this process stays small (the scan is made in a child, torch is not imported, nor by
``benchmarks.common``) and records its own peak (``parent_peak_rss_mib``), the floor under every
child's figure.

Writes ``benchmarks/results/scan_memory/cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, ROOT, write_results

DIP = ROOT / ".venv" / "bin" / "dip"
GiB, MiB = 2**30, 2**20


def make_scan(path: Path, height: int, width: int, seed: int = 0, specks: int = 300) -> None:
    """Write a seeded synthetic scan to ``path``: a 16-bit RGB TIFF, height x width px.

    Values in [0, 1] before quantising: a colour gradient (0.2-0.8), a texture of crossed sines
    (amplitude 0.06), Gaussian grain (σ 0.012, about 3/255) and ``specks`` dust specks (discs of
    radius 1-3 px, 0.25-0.45 darker or brighter, grey).
    """
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]  # (H, 1)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]  # (1, W)
    luma = 0.2 + 0.4 * x + 0.2 * y  # (H, W)
    luma = luma + 0.06 * np.sin(x * width / 23.0) * np.cos(y * height / 37.0)  # (H, W)
    tint = np.array([1.0, 0.9, 0.75], dtype=np.float32)  # warm, like an old print
    image = luma[..., None] * tint + rng.normal(0, 0.012, (height, width, 3)).astype(np.float32)  # (H, W, 3)
    for _ in range(specks):
        r = int(rng.integers(1, 4))
        cy, cx = int(rng.integers(r, height - r)), int(rng.integers(r, width - r))
        yy, xx = np.ogrid[-r:r + 1, -r:r + 1]
        disc = (yy**2 + xx**2) <= r * r  # (2r+1, 2r+1)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        image[cy - r:cy + r + 1, cx - r:cx + r + 1][disc] += sign * rng.uniform(0.25, 0.45)
    pixels = np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)  # (H, W, 3)
    import tifffile

    tifffile.imwrite(path, pixels, photometric="rgb")


def run_child(command: list[str], stdout_path: Path, timeout_s: float) -> dict:
    """Run ``command`` with stdout to ``stdout_path``: returncode, seconds, peak RSS (MiB, the
    kernel's ru_maxrss of this child alone), and whether it was stopped at ``timeout_s``."""
    started = time.perf_counter()
    with open(stdout_path, "wb") as stdout:
        child = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, cwd=stdout_path.parent)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - started > timeout_s:
            child.send_signal(signal.SIGKILL)
            timed_out = True
            pid, status, usage = os.wait4(child.pid, 0)
            break
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    stderr = child.stderr.read().decode(errors="replace")
    child.stderr.close()
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return {"returncode": child.returncode, "seconds": round(seconds, 1), "timed_out": timed_out,
            "peak_rss_mib": round(usage.ru_maxrss * 1024 / MiB, 1),  # Linux reports KiB
            "stderr_tail": stderr[-2000:]}


def mem_available() -> int:
    """The kernel's MemAvailable, in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--budgets", default="default,4", help="comma-separated: 'default' or GiB")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a run may take before it is stopped")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--make-scan", metavar="PATH", help="only write the scan to PATH (what step 1 runs in a child)")
    args = parser.parse_args()
    if args.make_scan:
        make_scan(Path(args.make_scan), args.height, args.width)
        return

    with tempfile.TemporaryDirectory(prefix="scan_memory_") as folder:
        # 1. The scan, made in a child: its arrays would raise this process's peak, which the
        #    children below inherit.
        scan = Path(folder) / "scan.tif"
        subprocess.run([sys.executable, "-m", "benchmarks.scan_memory", "--make-scan", str(scan),
                        "--width", str(args.width), "--height", str(args.height)], check=True, cwd=ROOT)
        base = [str(DIP), "restore", "scan.tif", "-o", "out.tif", "--task", "archive", "--preset", "cpu-small",
                "--iterations", str(args.iterations), "--quiet", "--json"]
        # 2. The interpreter alone: torch and the restore module imported, nothing else.
        imports = run_child([sys.executable, "-c", "import torch, pipeline.core.restore"],
                            Path(folder) / "imports.out", args.timeout)
        # 3. One restore per budget.
        results = []
        for budget in args.budgets.split(","):
            extra = [] if budget == "default" else ["--memory-budget-gb", budget]
            available = mem_available()
            run = run_child(base + extra, Path(folder) / "restore.json", args.timeout)
            text = (Path(folder) / "restore.json").read_text()
            summary = json.loads(text) if run["returncode"] == 0 and text.strip() else {}
            budget_gib = available / GiB if budget == "default" else float(budget)
            row = {"budget": budget if budget == "default" else f"{budget} GiB",
                   "budget_gib": round(budget_gib, 2), "mem_available_gib_before": round(available / GiB, 2),
                   **{k: run[k] for k in ("returncode", "timed_out", "seconds", "peak_rss_mib")},
                   "peak_rss_gib": round(run["peak_rss_mib"] / 1024, 2),
                   "within_budget": run["peak_rss_mib"] * MiB <= budget_gib * GiB,
                   "tiles": summary.get("tiles", 1 if summary else None),
                   "fit_seconds": summary.get("seconds"), "iterations": summary.get("iterations"),
                   "defect_fraction": summary.get("defect_fraction"), "threads": summary.get("threads")}
            if run["returncode"] != 0:
                row["stderr_tail"] = run["stderr_tail"]
            results.append(row)
            print(json.dumps(row), flush=True)
        file_mib = scan.stat().st_size / MiB

    report = {
        "restore_command": " ".join(["dip"] + base[1:]) + " [--memory-budget-gb B]",
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}, "
                   f"{round(os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GiB, 1)} GiB RAM",
        "image": {"width": args.width, "height": args.height, "bits": 16, "channels": 3,
                  "file_mib": round(file_mib, 1), "float32_mib": round(args.width * args.height * 3 * 4 / MiB, 1)},
        "interpreter_peak_rss_mib": imports["peak_rss_mib"],
        "parent_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MiB, 1),
        "runs": results,
    }
    print(f"wrote {write_results('scan_memory', 'cpu', report, root=args.results_dir)}")


if __name__ == "__main__":
    main()

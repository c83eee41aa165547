"""The docs' benchmarks page, generated from the results: ``docs/benchmarks.md``.

    python -m benchmarks.tables            # write docs/benchmarks.md from benchmarks/results/*/*.json
    python -m benchmarks.tables --check    # exit 1 when docs/benchmarks.md differs from what it would write (CI)

For each benchmark: a heading, what it measures (the first paragraph of its script's docstring),
then per results file the command, device, date and commit, and its headline tables (one function
per benchmark, in ``TABLES``; a benchmark without one gets a line naming its file). The results'
folder names are ``<script>`` or ``<script>-<settings>``; the script's part picks the function.

Reads JSON only: no torch, no pipeline.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"


# --- formatting ---------------------------------------------------------------------------------


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table; None shows as an empty cell."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def num(value, digits: int = 2, suffix: str = "") -> str | None:
    return None if value is None else f"{value:.{digits}f}{suffix}"


def pct(value, digits: int = 0) -> str | None:
    return None if value is None else f"{100 * value:.{digits}f}%"


def signed(value, digits: int = 2) -> str | None:
    return None if value is None else f"{value:+.{digits}f}"


# --- one function per benchmark: its results payload -> Markdown lines ----------------------------


def fit_speed(r: dict, variant: str) -> list[str]:
    plain = r["engines"][0]["it_per_s_steady"]

    def memory(e: dict) -> str:
        estimate = e.get("estimated_memory_mib")  # runs before 2026-11-27 10:00 did not estimate
        return f"{e['peak_memory_mib']:.0f}" + ("" if estimate is None else f" ({estimate:.0f})")

    rows = [[e["engine"], e["iterations"], num(e["it_per_s_steady"], 1),
             num(e["it_per_s_steady"] / plain, 2) if e["it_per_s_steady"] and plain else None,
             num(e["psnr"], 2, " dB"), memory(e), pct(e.get("mfu"), 1)] for e in r["engines"]]
    return [f"F16 at {r['size']}x{r['size']}, sigma 25, the `{r['preset']}` preset, seed {r['seed']}; steady "
            f"it/s from 10% of the iterations on; {r['flops_per_iteration'] / 1e12:.2f} TFLOP per iteration.", "",
            *table(["engine", "iterations", "it/s", "vs plain", "PSNR", "peak memory MiB (estimate)", "MFU"], rows)]


def packing_speed(r: dict, variant: str) -> list[str]:
    rows = []
    for run in r["runs"]:
        if run["mode"] == "one at a time":
            rows.append([f"one at a time (image {run['image'] + 1})", 1, num(run["it_per_s_steady"], 1),
                         num(run["images_per_hour"], 0), None, num(run["psnr"], 3)])
        else:
            alone = ", ".join(f"{p:.3f}/{a:.3f}" for p, a in zip(run["psnr"], run["psnr_alone_first_two"],
                                                                strict=False))
            rows.append([f"packed ({run['pack']})", run["pack"], num(run["it_per_s_steady"], 1),
                         num(run["images_per_hour"], 0), num(run["ratio_to_one_at_a_time"], 2, "x"),
                         f"{alone} (packed/alone)"])
    return [f"{r['size']}x{r['size']} crops of the denoising suite, the `{r['preset']}` preset, {r['iterations']} "
            f"iterations timed; images per hour at the paper's {r['paper_iterations']}.", "",
            *table(["mode", "images", "it/s (steady, each)", "images per hour", "vs one at a time", "PSNR dB"], rows)]


def paper_tables(r: dict, variant: str) -> list[str]:
    rows = []
    for image in r["images"]:
        sr = image["suite"] == "set5-x4"
        rows.append([image["suite"], image["image"], image["preset"],
                     num(image["psnr_y"] if sr else image["psnr"], 2),
                     num(image["psnr_authors"], 2),
                     num(image["psnr_y_baseline"] if sr else image["psnr_baseline"], 2),
                     num(image["psnr_y_tv"] if sr else image["psnr_tv"], 2), image["iterations"]])
    means = []
    for suite, summary in r["suites"].items():
        for name, versus in summary["vs_paper"].items():
            means.append([suite, f"{summary['done']} of {summary['total']}", name, versus["metric"],
                          num(versus["ours"], 2), num(versus["paper"], 2), signed(versus["difference"])])
    lines = [*table(["suite", "image", "preset", "ours (dB; PSNR-Y for Set5)", "authors' outputs",
                     "bicubic / input", "TV", "iterations"], rows)]
    if means:
        lines += ["Means against the paper:", "", *table(["suite", "images", "figure", "metric", "ours", "paper",
                                                          "difference"], means)]
    if r.get("not_run"):
        lines += [f"Not run: {', '.join(r['not_run'])} ({r['stopped']}).", ""]
    return lines


def parity(r: dict, variant: str) -> list[str]:
    rows, options = [], []
    for name, case in r["cases"].items():
        ours, plain = case["ours_summary"], case["plain_summary"]
        image = Path(case["image"]).name.removesuffix(".png").removesuffix("_GT")
        rows.append([f"{name} (`{case['preset']}`), {image}", case["size"], num(case["input"]),
                     num(case["tv"]), f"{ours['mean']:.2f} ± {ours['std']:.2f}",
                     f"{plain['mean']:.2f} ± {plain['std']:.2f}", signed(case["ours_minus_plain_db"])])
        if case.get("restarts_2"):
            options.append([name, "restarts 2 (seed pairs)", signed(case["restarts_2_gain_db"])])
        for label, figures in case["variants"].items():
            options.append([name, label, signed(figures["gain_db"])])
    lines = [f"Seeds {', '.join(map(str, r['seeds']))}; PSNR of the crop (RGB, dB).", "",
             *table(["case", "crop", "input", "TV", "ours, mean ± std", "plain DIP", "ours − plain"], rows)]
    if options:
        lines += ["Options beyond the paper, gain against the same seeds of ours:", "",
                  *table(["case", "option", "gain dB"], options)]
    if r.get("jpeg_quality"):
        lines += table(["jpeg quality", "input PSNR / SSIM", "restored PSNR / SSIM", "iterations"],
                       [[q.removeprefix("jpeg-"), f"{v['input']:.2f} / {v['input_ssim']:.3f}",
                         f"{v['psnr']:.2f} / {v['ssim']:.3f}", v["iterations"]] for q, v in r["jpeg_quality"].items()])
    return lines


def stop_rules(r: dict, variant: str) -> list[str]:
    size = f"{r['size']}x{r['size']} centre crops" if r["size"] else "full size"
    rows = [[rule, num(s["psnr_mean"], 2, " dB"), signed(s["gap_to_oracle_mean"]), signed(s["gap_to_oracle_worst"]),
             pct(s["iterations_saved_mean"])] for rule, s in r["summary"].items()]
    lines = [f"The `{r['preset']}` preset, {r['iterations']} iterations, {len(r['rows'])} images at {size}; gaps "
             "are to the oracle (the best PSNR along the fit).", ""]
    if r.get("replayed_from"):
        lines[0] += (f" The discrepancy rule replayed with today's σ̂ from the fits of "
                     f"`{r['replayed_from']['file']}`.")
    return lines + table(["rule", "mean PSNR", "mean gap", "worst gap", "iterations saved"], rows)


def archive(r: dict, variant: str) -> list[str]:
    if variant == "noise":
        order = sorted(r["summary"], key=lambda k: (k.split(":")[0] != "gaussian", k.split(":")[0],
                                                   int(k.split(":")[1])))
        rows = [[key, s["images"], pct(s["error_mean"]), pct(s["error_worst"]), s["within_10pct"],
                 s.get("within_10pct_of_present")] for key, s in ((k, r["summary"][k]) for k in order)]
        return ["σ̂ against the std of the noise left after clipping.", "",
                *table(["noise", "images", "mean error", "worst error", "within 10%",
                        "within 10% of the noise present"], rows)]
    if variant == "masks":
        s = r["summary"]
        rows = [[key.removeprefix("grain:"), num(v["precision"]), num(v["recall"]), num(v["iou"])]
                for key, v in s.items() if isinstance(v, dict)]
        return [*table(["grain", "precision", "recall", "IoU"], rows),
                f"A defect-free scan masked: {pct(s['masked_clean_share_mean'], 3)} on average, "
                f"{pct(s['masked_clean_share_worst'], 2)} at worst.", ""]
    if variant.startswith("fits"):
        rows = []
        for kind, label in (("archive", "with defects"), ("grain", "without defects")):
            entry = r["summary"][kind]
            for task in ("archive", "denoise"):
                t = entry[task]
                rows.append([f"{label} ({entry['scans']})", f"`{task}`", num(t["fixed_mean"]), num(t["oracle_mean"]),
                             num(t["discrepancy_mean"]),
                             f"{signed(t['discrepancy_gap_to_oracle_mean'])} / "
                             f"{signed(t['discrepancy_gap_to_oracle_worst'])}", pct(t["discrepancy_saved_mean"])])
        size = f"{r['size']}x{r['size']} centre crops" if r["size"] else "full size"
        gain = r["summary"]["archive"]
        return [f"The `{r['preset']}` preset, {r['iterations']} iterations, {size} of the scans; PSNR dB.", "",
                *table(["scans", "task", "fixed budget", "oracle", "discrepancy rule", "rule's gap (mean / worst)",
                        "iterations saved"], rows),
                f"`archive` − `denoise` on the scans with defects, fixed budget: "
                f"{signed(gain['archive_minus_denoise_fixed_mean'])} dB on average, "
                f"{signed(gain['archive_minus_denoise_fixed_worst'])} at worst.", ""]
    if variant == "scale":
        return [f"The blind analysis of a {r['summary']['size']} RGB scan, before any fit.", "",
                *table(["step", "seconds", "peak MiB (traced)", "scan MiB"],
                       [[x["step"], x["seconds"], x["peak_mib"], x["input_mib"]] for x in r["rows"]])]
    return generic(r, variant)


def decode_memory(r: dict, variant: str) -> list[str]:
    return [f"A {r['width']}x{r['height']} 16-bit RGB TIFF; its float32 array is {r['float32_mib']} MiB.", "",
            *table(["compression", "file MiB", "peak MiB", "peak / float32", "seconds"],
                   [[x["compression"], x["file_mib"], x["peak_mib"], num(x["peak_over_float32"], 2, "x"),
                     x["seconds"]] for x in r["rows"]])]


def scan_memory(r: dict, variant: str) -> list[str]:
    image = r["image"]
    return [f"A {image['width']}x{image['height']} {image['bits']}-bit RGB TIFF ({image['file_mib']} MiB; "
            f"{image['float32_mib']} MiB as float32): `{r['restore_command']}`. Importing torch and the restore "
            f"module alone peaks at {r['interpreter_peak_rss_mib']:.0f} MiB; {r['machine']}.", "",
            *table(["memory budget", "seconds", "peak RSS", "within budget", "tiles", "exit"],
                   [[f"{x['budget']} ({x['budget_gib']} GiB)", x["seconds"], f"{x['peak_rss_gib']} GiB",
                     "yes" if x["within_budget"] else "**no**", x["tiles"],
                     "timed out" if x["timed_out"] else x["returncode"]] for x in r["runs"]])]


def pipeline_overhead(r: dict, variant: str) -> list[str]:
    rows = [[storage, r[storage]["plain_loop_images_per_s"], r[storage]["dip_run_images_per_s"], r[storage]["ratio"]]
            for storage in ("local", "s3") if storage in r]
    lines = [f"{r['images']} images of {r['size']}x{r['size']}, fits of one iteration of `cpu-small`; images/s.", "",
             *table(["storage", "plain loop", "`dip run`", "ratio"], rows)]
    if "plan_memory" in r:
        plan = r["plan_memory"]
        lines += [f"Planning a {plan['rows']:,}-row manifest: {plan['seconds']} s, peak {plan['peak_rss_mib']} MiB.",
                  ""]
    return lines


def results_scale(r: dict, variant: str) -> list[str]:
    if variant == "requests":
        keys = ("images", "shards", "write_bytes", "read_bytes", "list", "delete", "writes_per_image",
                "result_writes_per_1000_rows")
        return ["Storage calls of the fit actor's real write path, counted at `pipeline.storage`.", "",
                *table(list(keys), [[r.get(k) for k in keys]])]

    def cell(step: dict) -> str:
        return f"{step['seconds']} s, {step['peak_rss_mib']:.0f} MiB"

    rows = [[f"{s['rows']:,}", storage, cell(s["done_check"]), cell(s["plan_rerun_90pct_done"]), cell(s["report"]),
             cell(s["plan_fresh"])] for storage in ("local", "s3") for s in r.get(storage, [])]
    return ["Each step in a fresh process, its peak memory (VmHWM) included.", "",
            *table(["rows", "storage", "done check", "planning the rerun (90% done)", "`dip report`",
                    "planning from scratch"], rows)]


def step_roofline(r: dict, variant: str) -> list[str]:
    gbytes = sum(op["gbytes"] for op in r["ops"])
    return [f"{r['size']}x{r['size']}: {r['tflop']} TFLOP and {gbytes:.1f} GB of unfused traffic per iteration "
            f"({r['bytes_per_value']:g} bytes a value); the roofline of the unfused step is {r['roofline_ms']} ms "
            f"({1000 / r['roofline_ms']:.0f} it/s at most). The ops with the largest bounds:", "",
            *table(["op", "calls", "GFLOP", "GB", "bound ms", "bound by"],
                   [[op["op"], op["calls"], num(op["flops"] / 1e9, 1), op["gbytes"], op["bound_ms"], op["bound"]]
                    for op in r["ops"][:10]])]


def profile_step(r: dict, variant: str) -> list[str]:
    line = f"{r['size']}x{r['size']}, {r['iterations']} profiled iterations: {r['wall_ms_per_iteration']} ms wall " \
           "per iteration"
    if r["device_busy_ms_per_iteration"] is None:  # the CPU: no device kernels to sort
        return [line + ".", ""]
    share = r.get("categories_share", {})
    return [line + f", the device busy {r['device_busy_ms_per_iteration']} ms ({pct(r['device_busy_fraction'])}).",
            "", *table(["kernel category", "ms per iteration", "share"],
                       [[k, v, pct(share.get(k))] for k, v in r["categories_ms_per_iteration"].items()])]


def layer_speed(r: dict, variant: str) -> list[str]:
    return table(["layer", "input", "fast ms", "fast TFLOP/s", "plain ms", "plain TFLOP/s"],
                 [[x["layer"], "x".join(map(str, x["input"])), x["fast"]["ms"], x["fast"]["tflops"],
                   x["plain"]["ms"], x["plain"]["tflops"]] for x in r["layers"]])


def generic(r, variant: str) -> list[str]:
    return ["No table for this benchmark yet: its figures are in the file named above.", ""]


# The order of a script's results files where it writes several (the rest by name).
VARIANTS = {"noise": 0, "masks": 1, "fits": 2, "scale": 3}

# The page's order; the title of each benchmark's section and its table.
TABLES = {
    "paper_tables": ("The paper's tables on one GPU", paper_tables),
    "parity": ("Parity with a plain DIP", parity),
    "stop_rules": ("Stopping rules", stop_rules),
    "archive": ("Archive scans", archive),
    "fit_speed": ("Fit speed", fit_speed),
    "profile_step": ("Where an iteration's time goes", profile_step),
    "layer_speed": ("Each layer alone", layer_speed),
    "step_roofline": ("The roofline of one iteration", step_roofline),
    "packing_speed": ("Packing", packing_speed),
    "decode_memory": ("Decoding memory", decode_memory),
    "scan_memory": ("A 12 MP scan on the CPU", scan_memory),
    "pipeline_overhead": ("Pipeline overhead", pipeline_overhead),
    "results_scale": ("Results at archive scale", results_scale),
}


# --- the page -----------------------------------------------------------------------------------


def what_it_measures(script: str) -> str:
    """The first paragraph of ``benchmarks/<script>.py``'s docstring, on one line."""
    path = ROOT / "benchmarks" / f"{script}.py"
    if not path.exists():
        return ""
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    return " ".join(docstring.split("\n\n")[0].split())


def caption(record: dict, path: Path) -> list[str]:
    commit = record.get("commit", "unknown")
    short = commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")
    mark = "†" if "commit_note" in record else ""
    return [f"**{record.get('device_description', record.get('device'))}** · {str(record.get('date', ''))[:10]} · "
            f"commit `{short}`{mark} · torch {record.get('torch')} · "
            f"`{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`", "",
            f"    {record.get('command')}", ""]


def render(results: Path = RESULTS) -> str:
    """The page's Markdown from every ``<results>/<benchmark>/<device>.json``."""
    files: dict[str, list[tuple[str, Path]]] = {}
    for path in sorted(results.glob("*/*.json")):
        script, _, variant = path.parent.name.partition("-")
        files.setdefault(script, []).append((variant, path))
    lines = ["# Benchmarks", "",
             "Generated by `python -m benchmarks.tables` from `benchmarks/results/<benchmark>/<device>.json`: do not",
             "edit it by hand (CI runs `python -m benchmarks.tables --check`). Each table gives its device, the date",
             "of the run, the commit it ran at and the command; the file beside it holds every figure. † marks",
             "the commit that recorded a file whose run predates commit stamping. Experiments that did not make",
             "it into the product are written up in `docs/experiments/`.", ""]
    for script in [*[s for s in TABLES if s in files], *sorted(set(files) - set(TABLES))]:
        title, function = TABLES.get(script, (script, generic))
        lines += [f"## {title} (`benchmarks.{script}`)", ""]
        if sentence := what_it_measures(script):
            lines += [sentence, ""]
        for variant, path in sorted(files[script], key=lambda vp: (VARIANTS.get(vp[0].split("-")[0], 9), vp)):
            record = json.loads(path.read_text())
            lines += [f"### {variant + ', ' if variant else ''}{record.get('device')}", ""]
            lines += caption(record, path) + function(record.get("results"), variant)
    return "\n".join(lines).rstrip("\n") + "\n"


def check(docs: Path = DOCS, results: Path = RESULTS) -> bool:
    """Whether ``docs`` is what ``render`` would write."""
    return docs.exists() and docs.read_text() == render(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/benchmarks.md is not up to date")
    args = parser.parse_args(argv)
    if args.check:
        if check():
            return 0
        print(f"{DOCS.relative_to(ROOT)} is not what the results give: run python -m benchmarks.tables",
              file=sys.stderr)
        return 1
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(render())
    print(f"wrote {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

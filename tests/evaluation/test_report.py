"""dip report on a hand-made results table (no Ray): latest attempts, the summary, the files, the HTML page
(and the page in headless Chromium, where it is installed)."""

import base64
import csv
import datetime as dt
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.batch import results
from pipeline.batch.job import RunConfig, write_plan
from pipeline.cli.main import main
from pipeline.core.options import Options
from pipeline.evaluation import evaluate
from pipeline.evaluation import summary as summaries
from pipeline.evaluation.report import MAX_FAILURES, read_latest

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def gradient_png(path: Path, width: int, height: int, seed: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 / width, yy * 255 / height, 128 + 0 * xx], -1) + rng.normal(0, 8, (height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image if mode == "RGB" else (image[..., 0] > 100).astype(np.uint8) * 255).save(path)


def history(final: float) -> str:
    return json.dumps([{"iteration": i, "loss": 0.01 / i, "psnr_observation": final - 3 + i / 100,
                        "psnr_reference": final - 2 + i / 150, "seconds": i / 10} for i in (100, 200, 300)])


def fake_run(root: Path) -> str:
    """A run as the batch job leaves it: a plan, restored PNGs and result rows, made by hand.

    a: denoise (noise:25), on a GPU; an error at attempt 1, ok at attempt 2.
    b: x4 super-resolution (downsample:4), on the CPU, with the TV baseline.
    kate: inpainting with a mask; its input is its reference (psnr_input is infinite).
    broken: an error row.
    """
    data, out = root / "data", root / "out"
    gradient_png(data / "a.png", 40, 32, 1)
    gradient_png(data / "b.png", 48, 40, 2)
    gradient_png(data / "kate.png", 36, 36, 3)
    gradient_png(data / "kate_mask.png", 36, 36, 4, mode="L")
    rows = [
        {"image_id": "a", "uri": str(data / "a.png"), "degradation": "noise:25", "suite": "denoise-color-25",
         "paper_psnr": 30.43},
        {"image_id": "b", "uri": str(data / "b.png"), "degradation": "downsample:4", "suite": "set5-x4",
         "paper_psnr": 29.90, "params": json.dumps({"tv_baseline": True})},
        {"image_id": "kate", "uri": str(data / "kate.png"), "task": "inpaint", "mask_uri": str(data / "kate_mask.png"),
         "reference_uri": str(data / "kate.png"), "suite": "inpaint-samples"},
        {"image_id": "broken", "uri": str(data / "missing.png"), "degradation": "noise:25", "suite": "denoise-color-25",
         "paper_psnr": 30.43},
    ]
    manifest = evaluate.write_manifest(rows, str(out))
    plan, _ = write_plan(RunConfig(manifest=manifest, output=str(out), defaults=Options(preset="cpu-small")), "run1")
    jobs = {j["image_id"]: j for j in pq.read_table(plan).to_pylist()}
    shards = results.ShardWriter(str(out), "run1", rows=2)
    figures = {
        "a": dict(psnr=28.0, ssim=0.80, psnr_input=20.0, psnr_baseline=20.0, device="cuda:0", seconds=10.0),
        "b": dict(psnr=30.0, psnr_y=31.0, ssim=0.90, psnr_baseline=29.0, psnr_y_baseline=30.0, psnr_tv=29.5,
                  psnr_y_tv=30.4, device="cpu", seconds=5.0),
        "kate": dict(psnr=33.0, ssim=0.95, psnr_input=math.inf, psnr_baseline=math.inf, device="cpu", seconds=7.0),
    }
    for image_id, job in jobs.items():
        options = json.loads(job["options"])
        base = {"image_id": image_id, "uri": job["uri"], "task": options["task"], "preset": "cpu-small",
                "config_hash": job["config_hash"], "seed": options["seed"], "run_id": "run1", "started_at": T0}
        extra = json.loads(job["extra"])
        if image_id in figures:
            source = job["reference_uri"] or job["uri"]
            restored = out / "restored" / f"{image_id}.png"
            restored.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(source) as image:  # the "restored" image: the clean one, cut like the reference
                w, h = image.size
                image.crop((0, 0, w // 4 * 4, h // 4 * 4) if image_id == "b" else (0, 0, w, h)).save(restored)
            if image_id == "a":
                shards.add({**extra, **base, "status": "error", "error": "FitDiverged: loss became nan",
                            "attempt": 1, "finished_at": T0, "device": "cuda:0", "seconds": 1.0})
            shards.add({**extra, **base, **figures[image_id], "status": "ok", "attempt": 2 if image_id == "a" else 1,
                        "output_uri": str(restored), "iterations": 300, "history": history(figures[image_id]["psnr"]),
                        "finished_at": T0 + dt.timedelta(minutes=1)})
        else:
            shards.add({**extra, **base, "status": "error", "attempt": 1, "finished_at": T0, "device": "cpu",
                        "seconds": 0.5, "error": f"FileNotFoundError: read {job['uri']}: no such bucket or object <&>"})
    shards.flush()
    return str(out)


@pytest.fixture
def run_output(tmp_path):
    return fake_run(tmp_path)


def test_the_latest_rows_are_the_latest_finish_then_the_highest_attempt(tmp_path):
    shards = results.ShardWriter(str(tmp_path), "r", rows=2)
    for row in [
        {"image_id": "x", "attempt": 2, "finished_at": T0, "status": "error"},
        {"image_id": "x", "attempt": 3, "finished_at": T0, "status": "ok", "history": history(30.0), "psnr": 29.0},
        {"image_id": "x", "attempt": 1, "finished_at": T0 - dt.timedelta(days=1), "status": "error"},
        {"image_id": "y", "attempt": 1, "finished_at": T0 + dt.timedelta(seconds=5), "status": "ok"},
        {"image_id": "y", "attempt": 1, "finished_at": T0, "status": "error"},
    ]:
        shards.add(row)
    shards.flush()
    latest = read_latest(str(tmp_path), max_images=1)
    rows = {r["image_id"]: r for r in latest.table.to_pylist()}
    assert (rows["x"]["attempt"], rows["x"]["status"]) == (3, "ok")  # same finish: the higher attempt
    assert rows["y"]["status"] == "ok"
    assert "history" not in latest.table.column_names  # kept only for the images shown
    assert rows["x"]["psnr_oracle"] == pytest.approx(30.0 - 2 + 300 / 150) and rows["y"]["psnr_oracle"] is None
    assert set(latest.histories) == {"x", "y"}  # the first image, and each group's first curves


def test_summary_per_suite_and_task(run_output):
    table = read_latest(run_output).table
    assert table["image_id"].to_pylist() == ["a", "broken", "kate", "b"]  # sorted by suite, then id
    summary = {(s["suite"], s["task"]): s for s in summaries.summarize(table)}
    assert list(summary) == [("denoise-color-25", "denoise"), ("inpaint-samples", "inpaint"), ("set5-x4", "sr")]
    denoise, inpaint, sr = summary.values()
    assert (denoise["images"], denoise["ok"], denoise["failed"]) == (2, 1, 1)
    assert denoise["psnr_mean"] == denoise["psnr_median"] == 28.0 and denoise["psnr_input_mean"] == 20.0
    assert denoise["paper_metric"] == "psnr" and denoise["paper_delta"] == pytest.approx(28.0 - 30.43)
    assert denoise["gpu_seconds"] == 10.0 and denoise["cpu_seconds"] == 0.5
    assert sr["paper_metric"] == "psnr_y" and sr["paper_delta"] == pytest.approx(31.0 - 29.90)
    assert (sr["psnr_y_mean"], sr["psnr_y_baseline_mean"], sr["psnr_y_tv_mean"], sr["psnr_tv_mean"]) == (
        31.0, 30.0, 30.4, 29.5)
    assert sr["cpu_seconds"] == 5.0 and sr["gpu_seconds"] == 0
    assert inpaint["psnr_mean"] == 33.0 and inpaint["psnr_input_mean"] is None  # infinite: left out
    assert inpaint["paper_psnr"] is None and inpaint["paper_delta"] is None
    assert denoise["paper_note"] == "not comparable with the paper (preset cpu-small)" and inpaint["paper_note"] is None


def test_runs_unlike_the_paper_s_are_marked_and_a_plain_run_has_no_suite_label():
    import pyarrow as pa

    def summary(rows):
        return summaries.summarize(pa.Table.from_pylist(
            [{"image_id": str(i), "status": "ok", "task": "sr", "psnr_y": 30.0, "paper_psnr": 29.90, **r}
             for i, r in enumerate(rows)]))[0]

    assert summary([{"suite": "set5-x4", "preset": "sr-x4", "crop": None}])["paper_note"] is None
    assert summary([{"suite": "set5-x4", "preset": "sr-x4", "crop": 64}, {"suite": "set5-x4", "preset": "sr-x8",
                                                                         "crop": 64}])["paper_note"] == (
        "not comparable with the paper (preset sr-x8; 64x64 crops)")
    plain = summary([{"suite": None, "preset": "sr-x4", "paper_psnr": None}])
    assert plain["suite"] == "" and plain["paper_note"] is None


def test_summary_over_seeds_gives_each_image_s_spread_and_the_spread_of_the_mean():
    import pyarrow as pa

    psnr = {("x", 1): 30.0, ("x", 2): 31.0, ("x", 3): 32.5, ("y", 1): 25.0, ("y", 2): 24.0, ("y", 3): 24.5}
    psnr_y = {key: value + 1 for key, value in psnr.items()}  # set5-x4's paper metric
    keys = [*psnr, ("y", 4)]  # y's fourth seed failed: it counts nowhere
    rows = [{"image_id": f"{i}-s{k}", "status": "error" if k == 4 else "ok", "task": task, "suite": suite,
             "psnr": psnr.get((i, k)), "psnr_y": psnr_y.get((i, k)), "replicate_of": i, "replicate": k}
            for suite, task in (("folder", "denoise"), ("set5-x4", "sr")) for i, k in keys]
    rows.append({"image_id": "z", "status": "ok", "task": "denoise", "suite": "folder", "psnr": 40.0,
                 "psnr_y": None, "replicate_of": None, "replicate": None})  # no replicate: not in the spread
    table = pa.Table.from_pylist(rows)
    summary = {s["suite"]: s for s in summaries.summarize(table)}
    for suite, values in (("folder", psnr), ("set5-x4", psnr_y)):
        x, y = [[values[(i, k)] for k in (1, 2, 3)] for i in ("x", "y")]
        entry = summary[suite]
        assert entry["seeds"] == 3
        assert entry["seed_std_mean"] == pytest.approx((np.std(x, ddof=1) + np.std(y, ddof=1)) / 2)
        assert entry["suite_seed_std"] == pytest.approx(np.std([(a + b) / 2 for a, b in zip(x, y, strict=True)],
                                                                ddof=1))
    per_image = {(r["suite"], r["image"]): r for r in summaries.per_image_seeds(table)}
    assert set(per_image) == {("folder", "x"), ("folder", "y"), ("set5-x4", "x"), ("set5-x4", "y")}
    y = per_image[("set5-x4", "y")]
    assert (y["metric"], y["seeds"], y["min"], y["max"]) == ("psnr_y", 3, 25.0, 26.0)
    assert y["mean"] == pytest.approx(25.5) and y["std"] == pytest.approx(0.5)
    text = summaries.seeds_csv(list(per_image.values()))
    assert text.splitlines()[0] == ",".join(summaries.SEED_COLUMNS) and len(text.splitlines()) == 5
    no_seeds = summaries.summarize(table.filter(pa.compute.equal(table["image_id"], "z")))
    assert no_seeds[0]["seeds"] is None and summaries.per_image_seeds(table.slice(len(table) - 1)) == []


def test_report_writes_csv_markdown_and_a_self_contained_page(run_output):
    outcome = CliRunner().invoke(main, ["report", run_output])
    assert outcome.exit_code == 0, outcome.output
    assert "denoise-color-25" in outcome.output and "FitDiverged" not in outcome.output  # a later attempt is ok
    out = Path(run_output)
    summary = list(csv.DictReader(io.StringIO((out / "summary.csv").read_text())))
    assert list(summary[0]) == list(summaries.SUMMARY_COLUMNS)
    assert [(s["suite"], s["task"], s["ok"], s["failed"]) for s in summary] == [
        ("denoise-color-25", "denoise", "1", "1"), ("inpaint-samples", "inpaint", "1", "0"),
        ("set5-x4", "sr", "1", "0")]
    markdown = (out / "summary.md").read_text()
    assert "| denoise-color-25 | denoise | 1 | 1 | 28.00 |" in markdown and "## Failures (1)" in markdown
    assert "dip 29.90, bicubic 28.43, tv 28.86" in markdown

    page = (out / "report.html").read_text()
    sources = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(sources) == 3 * 3 + 3 + 1  # three strips, a curve per suite, the histogram
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"""(src|href)=['"]?(https?:|file:|/)""", page)  # nothing outside the page
    assert "no such bucket or object &lt;&amp;&gt;" in page  # the failure, escaped
    decoded = [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) for s in sources]
    strip_b = decoded[-3:]  # set5-x4 sorts last: its degraded input is the 12x10 low-res image, enlarged
    assert [im.size for im in strip_b] == [(192, 160), (192, 160), (192, 160)]
    assert len(strip_b[0].getcolors(2**16)) < len(strip_b[2].getcolors(2**16))  # blocky: fewer colours


def test_a_report_lists_a_bounded_number_of_failures_and_all_of_them_in_a_csv(tmp_path):
    shards = results.ShardWriter(str(tmp_path), "r", rows=500)
    failed = MAX_FAILURES + 50
    for i in range(failed):
        shards.add({"image_id": f"bad{i:04d}", "attempt": 1, "finished_at": T0, "status": "error", "task": "denoise",
                    "error": f"ValueError: bad value {i}"})
    shards.add({"image_id": "good", "attempt": 1, "finished_at": T0, "status": "ok", "task": "denoise", "psnr": 30.0,
                "psnr_baseline": 20.0, "history": history(30.0)})
    shards.flush()
    outcome = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert outcome.exit_code == 0, outcome.output
    page = (tmp_path / "report.html").read_text()
    assert page.count("ValueError: bad value") == MAX_FAILURES and f"Failures ({failed})" in page
    listed = list(csv.DictReader(io.StringIO((tmp_path / "failures.csv").read_text())))
    assert len(listed) == failed and listed[-1]["error"] == f"ValueError: bad value {failed - 1}"
    markdown = (tmp_path / "summary.md").read_text()
    assert markdown.count("ValueError: bad value") == MAX_FAILURES and "all in failures.csv" in markdown


def test_an_output_of_the_per_image_layout_is_reported_and_compacted(tmp_path):
    legacy = tmp_path / "legacy"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "legacy_output", legacy)
    before = {r["image_id"]: r for r in read_latest(str(legacy)).table.to_pylist()}
    assert {k: (r["status"], r["attempt"]) for k, r in before.items()} == {
        "scan-1": ("ok", 2), "scan-2": ("ok", 1), "scan-3": ("error", 1)}
    assert before["scan-1"]["psnr_oracle"] == pytest.approx(25 + 300 / 150)
    assert CliRunner().invoke(main, ["report", str(legacy)]).exit_code == 0
    assert "FileNotFoundError: read scan-3.tif" in (legacy / "failures.csv").read_text()

    outcome = CliRunner().invoke(main, ["compact", str(legacy)])
    assert outcome.exit_code == 0 and "4 rows: 3 kept in 1 file(s), 1 moved to attempts/" in outcome.output
    assert sorted(p.name for p in (legacy / "results").iterdir())[0].startswith("compacted-")
    assert len(list((legacy / "results").iterdir())) == 1  # the per-image folders are gone
    after = {r["image_id"]: r for r in read_latest(str(legacy)).table.to_pylist()}
    assert after == before
    kept = results.read_table(str(legacy)).to_pylist()  # every column, the manifest's own too
    assert sorted((r["image_id"], r["box"]) for r in kept) == [("scan-1", "B1"), ("scan-2", "B2"), ("scan-3", "B2")]
    moved = pq.read_table(next((legacy / "attempts").iterdir())).to_pylist()
    assert [(r["image_id"], r["attempt"], r["status"]) for r in moved] == [("scan-1", 1, "error")]


def test_report_of_an_empty_prefix_fails_naming_it(tmp_path):
    outcome = CliRunner().invoke(main, ["report", str(tmp_path / "nothing")])
    assert outcome.exit_code == 1 and "no results under" in outcome.output


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium_binary() is None,
                    reason="chromium is not installed (Debian: apt-get install -y chromium chromium-driver)")
def test_report_page_renders_in_headless_chromium(run_output, tmp_path):
    assert CliRunner().invoke(main, ["report", run_output]).exit_code == 0
    page = Path(run_output) / "report.html"
    flags = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]

    # 1. Every <img> decoded: the page's own script counts them on load.
    dom = subprocess.run([*flags, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:2000]
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    assert loaded and total, body.group(0)
    assert int(loaded.group(1)) == int(total.group(1)) == page.read_text().count("<img ") == 13

    # 2. A screenshot that is not blank.
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={shot}",
                    "--window-size=1200,2000", page.as_uri()], capture_output=True, timeout=120, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    assert len(image.getcolors(2**24)) > 100  # plots and thumbnails, not one colour


def test_thumbnails_of_16_bit_tiff_and_png_results():
    import io

    from PIL import Image

    from pipeline.core.encoding import encode
    from pipeline.core.images import decode
    from pipeline.evaluation.html import thumbnail_png
    from tests.core.test_archival import archival_tiff

    picture = decode(archival_tiff(), name="scan.tif")
    for fmt in ("tiff", "png"):
        restored = decode(encode(picture, fmt), name=f"restored.{fmt}")
        thumb = Image.open(io.BytesIO(thumbnail_png(restored.pixels)))
        assert thumb.format == "PNG" and thumb.size[0] > 0 and thumb.mode in ("RGB", "L")

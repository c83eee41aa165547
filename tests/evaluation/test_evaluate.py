"""Evaluation suites: the manifests they build, and a reduced suite end to end (dip evaluate + dip report)."""

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pipeline import storage
from pipeline.batch import manifest, results
from pipeline.cli.main import main
from pipeline.cli.options import EXIT_NOT_STARTED, EXIT_OK
from pipeline.core.options import Options
from pipeline.evaluation import evaluate, suites

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (the paper's images) is absent")


def write_png(path: Path, width: int, height: int, seed: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def fake_data(root: Path, width: int = 70, height: int = 52) -> Path:
    """Every file the built-in suites read, laid out like ../shared/data, as small random images."""
    for i, name in enumerate(suites.SET5):
        write_png(root / "set5_x4" / f"{name}_GT.png", width, height, i)
    for i, name in enumerate(suites.DENOISE_COLOR):
        write_png(root / "denoise_color_sigma25" / f"{name}_noisy.png", width, height, 10 + i)
        write_png(root / "denoise_color_sigma25" / f"{name}_GT.png", width, height, 20 + i)
        write_png(root / "denoise_color_sigma25" / f"{name}_bm3d.png", width, height, 50 + i)
    for i, name in enumerate(suites.INPAINT_SAMPLES):
        write_png(root / "samples" / "inpainting" / f"{name}.png", width, height, 30 + i)
        write_png(root / "samples" / "inpainting" / f"{name}_mask.png", width, height, 40 + i, mode="L")
    return root


def test_paper_figures_are_the_papers():
    assert suites.PAPER["set5-x4"] == {"dip": 29.90, "bicubic": 28.43, "tv": 28.86}
    assert suites.PAPER["denoise-color-25"] == {"dip": 30.43, "cbm3d": 31.42}
    assert suites.PAPER_METRIC == {"set5-x4": "psnr_y", "denoise-color-25": "psnr", "inpaint-samples": "psnr",
                                     "archive-synthetic": "psnr", "folder": "psnr"}
    assert set(suites.PAPER) == set(suites.SUITES)


def test_set5_rows_degrade_the_ground_truth_and_ask_for_the_tv_baseline(tmp_path):
    data = fake_data(tmp_path / "data")
    rows = evaluate.build_rows("set5-x4", str(data), str(tmp_path / "out"))
    assert [r["image_id"] for r in rows] == list(suites.SET5)
    assert all(r["uri"] == str(data / "set5_x4" / f"{r['image_id']}_GT.png") for r in rows)
    assert {(r["task"], r["degradation"], r["preset"], r["suite"], r["paper_psnr"]) for r in rows} == {
        ("sr", "downsample:4", "sr-x4", "set5-x4", 29.90)}
    assert all(json.loads(r["params"]) == {"tv_baseline": True} for r in rows)
    assert all(r["reference_uri"] is None and r["mask_uri"] is None for r in rows)
    assert not (tmp_path / "out").exists()  # no crop: the originals are used, nothing is written
    off = evaluate.build_rows("set5-x4", str(data), str(tmp_path / "out"), tv_baseline=False, preset="cpu-small")
    assert all(r["params"] is None and r["preset"] == "cpu-small" for r in off)


def test_denoise_rows_pair_the_noisy_inputs_with_their_ground_truths(tmp_path):
    data = fake_data(tmp_path / "data")
    rows = evaluate.build_rows("denoise-color-25", str(data), str(tmp_path / "out"))
    assert len(rows) == 9
    f16 = rows[0]
    assert f16["image_id"] == "F16" and f16["uri"].endswith("denoise_color_sigma25/F16_noisy.png")
    assert f16["reference_uri"].endswith("denoise_color_sigma25/F16_GT.png")
    assert (f16["task"], f16["degradation"], f16["preset"], f16["paper_psnr"], f16["params"]) == (
        "denoise", None, "denoise", 30.43, None)
    with_tv = evaluate.build_rows("denoise-color-25", str(data), str(tmp_path / "out"), tv_baseline=True)
    assert json.loads(with_tv[0]["params"]) == {"tv_baseline": True}


def test_denoise_rows_score_cbm3d_s_published_output_beside_them(tmp_path):
    from pipeline.core.images import read
    from pipeline.core.metrics import psnr

    data = fake_data(tmp_path / "data")
    folder = data / "denoise_color_sigma25"
    clean = read(folder / "F16_GT.png").pixels
    published = clean.clone()
    published[..., :10, :] = 0.5  # a known error: the score must be of this file against the ground truth
    Image.fromarray((published[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
        folder / "F16_bm3d.png")
    f16 = evaluate.build_rows("denoise-color-25", str(data), str(tmp_path / "out"))[0]
    assert f16["published_psnr"] == pytest.approx(psnr(read(folder / "F16_bm3d.png").pixels, clean))
    assert 10 < f16["published_psnr"] < 40
    cropped = evaluate.build_rows("denoise-color-25", str(data), str(tmp_path / "crop"), crop=40)[0]
    crop_of = [read(tmp_path / "crop" / "crops" / "denoise-color-25" / f"F16_{kind}.png").pixels
               for kind in ("bm3d", "GT")]
    assert cropped["published_psnr"] == pytest.approx(psnr(*crop_of))  # scored on the crop, like the fit
    assert evaluate.build_rows("set5-x4", str(data), str(tmp_path / "out"))[0]["published_psnr"] is None


def test_inpaint_rows_use_the_image_as_reference_and_their_paper_presets(tmp_path):
    data = fake_data(tmp_path / "data")
    rows = evaluate.build_rows("inpaint-samples", str(data), str(tmp_path / "out"))
    assert {r["image_id"]: r["preset"] for r in rows} == {
        "kate": "inpaint-text", "library": "inpaint-text", "vase": "inpaint-holes"}
    for r in rows:
        assert r["task"] == "inpaint" and r["uri"] == r["reference_uri"] and r["paper_psnr"] is None
        assert r["mask_uri"].endswith(f"inpainting/{r['image_id']}_mask.png")


def test_archive_rows_restore_each_scan_both_ways_from_one_observation(tmp_path):
    data = fake_data(tmp_path / "data")
    rows = evaluate.build_rows("archive-synthetic", str(data), str(tmp_path / "out"))
    assert len(rows) == 9 * 2 * 2
    f16 = [r for r in rows if r["image_id"].startswith("F16-")]
    assert [(r["image_id"], r["task"], r["degradation"], r["subset"]) for r in f16] == [
        ("F16-archive5-archive", "archive", "archive:5", "defects"), ("F16-archive5-denoise", "denoise", "archive:5",
                                                                       "defects"),
        ("F16-grain5-archive", "archive", "grain:5", "clean"), ("F16-grain5-denoise", "denoise", "grain:5", "clean")]
    assert f16[0]["seed"] == f16[1]["seed"] != f16[2]["seed"] == f16[3]["seed"]  # one observation per scan
    assert {r["degradation"] for r in rows if r["image_id"].startswith("baboon-")} == {"archive:12", "grain:12"}
    assert all(r["uri"].endswith("_GT.png") for r in rows)
    assert len(evaluate.build_rows("archive-synthetic", str(data), str(tmp_path / "out"), limit=2)) == 8
    jobs = [manifest.resolve(row, Options()) for row in rows[:4]]  # the batch job takes them
    assert [j.options.task for j in jobs] == ["archive", "denoise", "archive", "denoise"]
    assert jobs[0].options.seed == f16[0]["seed"]


def test_limit_keeps_the_first_images_and_crop_writes_centre_crops(tmp_path):
    data = fake_data(tmp_path / "data", width=70, height=52)
    out = tmp_path / "out"
    rows = evaluate.build_rows("inpaint-samples", str(data), str(out), limit=2, crop=32)
    assert [r["image_id"] for r in rows] == ["kate", "library"]
    for r in rows:
        for column in ("uri", "reference_uri", "mask_uri"):
            assert r[column].startswith(str(out / "crops" / "inpaint-samples")), r[column]
            assert Image.open(r[column]).size == (32, 32)
        original = np.asarray(Image.open(data / "samples" / "inpainting" / f"{r['image_id']}_mask.png"))
        left, top = (70 - 32) // 2, (52 - 32) // 2  # the same centre box for the image and its mask
        assert np.array_equal(np.asarray(Image.open(r["mask_uri"])), original[top:top + 32, left:left + 32])
        assert Image.open(r["mask_uri"]).mode == "L"
    denoise = evaluate.build_rows("denoise-color-25", str(data), str(out), limit=1, crop=48)
    assert Image.open(denoise[0]["uri"]).size == Image.open(denoise[0]["reference_uri"]).size == (48, 48)
    assert denoise[0]["uri"] != denoise[0]["reference_uri"]


def test_bad_arguments_are_refused_naming_the_value(tmp_path):
    data = str(fake_data(tmp_path / "data", width=40, height=36))
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match="multiple of 4, got 30"):
        evaluate.build_rows("set5-x4", data, out, crop=30)
    with pytest.raises(ValueError, match=r"baby_GT.png is 40x36, smaller than the crop 48x48"):
        evaluate.build_rows("set5-x4", data, out, crop=48)
    with pytest.raises(ValueError, match="unknown suite 'set14'"):
        evaluate.build_rows("set14", data, out)
    with pytest.raises(ValueError, match="needs a degradation"):
        evaluate.build_rows("folder", data, out)
    with pytest.raises(ValueError, match="--degradation 'noise:50' is for 'folder'"):
        evaluate.build_rows("set5-x4", data, out, degradation="noise:50")
    with pytest.raises(ValueError, match="blur"):
        evaluate.build_rows("folder", data, out, degradation="blur:3")
    with pytest.raises(ValueError, match="limit must be >= 1"):
        evaluate.build_rows("set5-x4", data, out, limit=0)
    (tmp_path / "data" / "set5_x4" / "bird_GT.png").unlink()
    with pytest.raises(FileNotFoundError, match="bird_GT.png is missing"):
        evaluate.build_rows("set5-x4", data, out)


def test_folder_suite_lists_the_images_under_a_prefix(tmp_path):
    write_png(tmp_path / "scans" / "a.png", 20, 16, 1)
    write_png(tmp_path / "scans" / "box 2" / "b.jpg", 20, 16, 2)
    (tmp_path / "scans" / "notes.txt").write_text("not an image")
    rows = evaluate.build_rows("folder", str(tmp_path / "scans"), str(tmp_path / "out"), degradation="noise:25")
    assert [r["uri"] for r in rows] == [str(tmp_path / "scans" / "a.png"), str(tmp_path / "scans" / "box 2" / "b.jpg")]
    assert rows[0]["image_id"] == "a" and re.fullmatch(r"box_2__b-[0-9a-f]{8}", rows[1]["image_id"])
    assert {(r["degradation"], r["suite"], r["paper_psnr"], r["preset"]) for r in rows} == {
        ("noise:25", "folder", None, None)}
    cropped = evaluate.build_rows("folder", str(tmp_path / "scans"), str(tmp_path / "out"), degradation="noise:25",
                                  crop=12)
    assert all(Image.open(r["uri"]).size == (12, 12) for r in cropped)


def test_the_manifest_passes_the_batch_jobs_checks_and_carries_suite_columns(tmp_path):
    data = fake_data(tmp_path / "data")
    out = str(tmp_path / "out")
    rows = [*evaluate.build_rows("set5-x4", str(data), out, limit=1),
            *evaluate.build_rows("inpaint-samples", str(data), out, limit=1)]
    url = evaluate.write_manifest(rows, out)
    assert url == str(tmp_path / "out" / "evaluation_manifest.parquet")
    assert pq.read_table(url).column_names == list(evaluate.COLUMNS)
    jobs = {job.image_id: job for job in manifest.plan(url, Options(preset="cpu-small"))}
    baby, kate = jobs["baby"], jobs["kate"]
    assert (baby.options.task, baby.options.scale, baby.options.preset, baby.options.tv_baseline) == (
        "sr", 4, "sr-x4", True)
    assert baby.extra == {"suite": "set5-x4", "subset": None, "paper_psnr": 29.90, "published_psnr": None,
                          "replicate_of": None, "replicate": None, "crop": None}
    assert (kate.options.task, kate.options.preset, kate.mask_uri is not None) == ("inpaint", "inpaint-text", True)


def test_seeds_make_replicates_that_share_one_observation_and_differ_in_their_fit_seed(tmp_path):
    from pipeline.batch.inputs import load_inputs

    write_png(tmp_path / "scans" / "a.png", 20, 16, 1)
    write_png(tmp_path / "scans" / "b.png", 20, 16, 2)
    out = str(tmp_path / "out")
    rows = evaluate.build_rows("folder", str(tmp_path / "scans"), out, degradation="noise:25", seeds=3)
    assert [r["image_id"] for r in rows] == ["a-s1", "a-s2", "a-s3", "b-s1", "b-s2", "b-s3"]
    assert [(r["replicate_of"], r["replicate"]) for r in rows[:3]] == [("a", 1), ("a", 2), ("a", 3)]
    assert len({r["degradation_seed"] for r in rows[:3]}) == 1 != len({r["degradation_seed"] for r in rows})
    jobs = list(manifest.plan(evaluate.write_manifest(rows, out), Options(preset="cpu-small", seed=4)))
    a = [job for job in jobs if job.extra["replicate_of"] == "a"]
    assert len({job.options.seed for job in a}) == 3 and len({job.config_hash for job in a}) == 3
    observed = [load_inputs(job.uri, degradation=job.degradation, seed=job.degradation_seed).observed.pixels
                for job in a]
    assert all(torch.equal(observed[0], o) for o in observed[1:])  # one observation, three fits
    one = evaluate.build_rows("folder", str(tmp_path / "scans"), out, degradation="noise:25")
    assert [r["image_id"] for r in one] == ["a", "b"] and one[0]["replicate_of"] is None
    for bad in (0, 101, 2.5):
        with pytest.raises(ValueError, match=f"seeds must be an integer from 1 to 100, got {bad}"):
            evaluate.build_rows("folder", str(tmp_path / "scans"), out, degradation="noise:25", seeds=bad)


def test_suites_read_and_crop_on_s3(s3_server, s3_bucket, tmp_path):
    data = fake_data(tmp_path / "data")
    options = s3_server.storage_options
    for path in sorted((data / "denoise_color_sigma25").glob("F16_*.png")):
        storage.write_bytes(f"{s3_bucket}/data/denoise_color_sigma25/{path.name}", path.read_bytes(), options)
    rows = evaluate.build_rows("denoise-color-25", f"{s3_bucket}/data", f"{s3_bucket}/out", limit=1, crop=16,
                               storage_options=options)
    assert rows[0]["uri"] == f"{s3_bucket}/out/crops/denoise-color-25/F16_noisy.png"
    assert Image.open(io.BytesIO(storage.read_bytes(rows[0]["reference_uri"], options))).size == (16, 16)
    url = evaluate.write_manifest(rows, f"{s3_bucket}/out", options)
    assert [job.image_id for job in manifest.plan(url, Options(), storage_options=options)] == ["F16"]


def test_evaluate_refuses_bad_arguments_before_starting(tmp_path):
    outcome = CliRunner().invoke(main, ["evaluate", "folder", "--data", str(tmp_path), "--output",
                                        str(tmp_path / "out"), "--device", "cpu"])
    assert outcome.exit_code == EXIT_NOT_STARTED
    assert "needs a degradation" in outcome.output
    outcome = CliRunner().invoke(main, ["evaluate", "set5-x4", "--data", str(tmp_path / "nothing"), "--output",
                                        str(tmp_path / "out")])
    assert outcome.exit_code == EXIT_NOT_STARTED and "baby_GT.png is missing" in outcome.output


def evaluate_and_report(args: list[str], output: Path):
    outcome = CliRunner().invoke(main, ["evaluate", *args, "--output", str(output), "--preset", "cpu-small",
                                        "--device", "cpu", "--quiet", "--data", str(SHARED)], catch_exceptions=False)
    assert outcome.exit_code == EXIT_OK, outcome.output
    report = CliRunner().invoke(main, ["report", str(output)], catch_exceptions=False)
    assert report.exit_code == 0, report.output
    rows = {r["image_id"]: r for r in results.read_table(str(output)).to_pylist()}
    summary = list(csv.DictReader(io.StringIO((output / "summary.csv").read_text())))
    return rows, summary, (output / "report.html").read_text(), report.output


@needs_shared_data
def test_denoise_suite_end_to_end_beats_the_noisy_input(ray_local, tmp_path):
    # Measured (2 CPUs, cpu-small, 400 iterations, 48x48 centre crops): F16 29.5 dB vs 20.3 noisy (+9.2),
    # baboon 26.4 vs 20.7 (+5.7). A broken fit stays near or below the input.
    rows, summary, page, printed = evaluate_and_report(
        ["denoise-color-25", "--limit", "2", "--crop", "48", "--iterations", "400"], tmp_path / "eval")
    assert set(rows) == {"F16", "baboon"}
    for row in rows.values():
        assert row["status"] == "ok" and row["suite"] == "denoise-color-25" and row["paper_psnr"] == 30.43
        assert row["psnr"] > row["psnr_input"] + 3, row
        assert row["psnr_baseline"] == pytest.approx(row["psnr_input"])  # the noisy input is the baseline
        assert Image.open(row["output_uri"]).size == (48, 48)
    assert [(s["suite"], s["task"], s["images"], s["ok"], s["failed"]) for s in summary] == [
        ("denoise-color-25", "denoise", "2", "2", "0")]
    mean = np.mean([r["psnr"] for r in rows.values()])
    assert float(summary[0]["psnr_mean"]) == pytest.approx(mean, abs=1e-3)
    assert float(summary[0]["paper_delta"]) == pytest.approx(mean - 30.43, abs=1e-3)
    assert float(summary[0]["cpu_seconds"]) > 0 and float(summary[0]["gpu_seconds"]) == 0
    assert (tmp_path / "eval" / "summary.md").exists() and "denoise-color-25" in printed
    images = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(images) == 2 * 3 + 2  # two strips (degraded, restored, reference), curves, histogram
    assert all(src.startswith("data:image/png;base64,") for src in images)


@needs_shared_data
def test_archive_suite_end_to_end_scores_masks_noise_and_both_tasks(ray_local, tmp_path):
    rows, summary, page, printed = evaluate_and_report(
        ["archive-synthetic", "--limit", "1", "--crop", "96", "--iterations", "60"], tmp_path / "eval")
    assert set(rows) == {"F16-archive5-archive", "F16-archive5-denoise", "F16-grain5-archive", "F16-grain5-denoise"}
    for image_id, row in rows.items():
        assert row["status"] == "ok" and row["noise_sigma_true"] > 0 and row["noise_sigma"] > 0, row
        if row["task"] == "archive":
            assert row["mask_output_uri"].endswith(f"masks/{image_id}.png") and row["mask_iou"] is not None
        else:
            assert row["mask_output_uri"] is None and row["mask_precision"] is None
    # one observation per scan: both tasks saw the same input
    assert rows["F16-archive5-archive"]["psnr_input"] == rows["F16-archive5-denoise"]["psnr_input"]
    groups = {(s["suite"], s["task"]): s for s in summary}
    assert set(groups) == {(f"archive-synthetic/{subset}", task) for subset in ("defects", "clean")
                           for task in ("archive", "denoise")}
    defects = groups[("archive-synthetic/defects", "archive")]
    assert float(defects["mask_iou_mean"]) == pytest.approx(rows["F16-archive5-archive"]["mask_iou"], abs=1e-3)
    assert float(defects["psnr_oracle_mean"]) >= float(defects["psnr_mean"]) - 1e-3
    assert groups[("archive-synthetic/defects", "denoise")]["mask_iou_mean"] == ""
    assert page.count("defect mask</figcaption>") == 2 and "mask recall" in printed


@needs_shared_data
def test_set5_suite_end_to_end_scores_the_y_channel_with_both_baselines(ray_local, tmp_path):
    # Measured (cpu-small, 400 iterations, baby's 64x64 centre): DIP 35.7 dB, bicubic 34.8, TV 38.1 (PSNR-Y).
    rows, summary, page, _ = evaluate_and_report(["set5-x4", "--limit", "1", "--crop", "64", "--iterations", "400"],
                                                 tmp_path / "eval")
    baby = rows["baby"]
    assert baby["status"] == "ok" and baby["task"] == "sr" and baby["paper_psnr"] == 29.90
    assert baby["psnr_y_tv"] is not None and baby["psnr_y_baseline"] is not None
    assert 25 < baby["psnr_y"] < 50 and baby["psnr_y"] > baby["psnr_y_baseline"] - 3, baby
    assert Image.open(baby["output_uri"]).size == (64, 64)
    assert summary[0]["paper_metric"] == "psnr_y"
    assert float(summary[0]["paper_delta"]) == pytest.approx(baby["psnr_y"] - 29.90, abs=1e-3)
    assert float(summary[0]["psnr_y_tv_mean"]) == pytest.approx(baby["psnr_y_tv"], abs=1e-3)
    assert page.count("data:image/png;base64,") == 3 + 2


def test_evaluate_over_seeds_end_to_end_reports_each_image_s_spread(ray_local, tmp_path):
    for i in range(2):
        write_png(tmp_path / "scans" / f"s{i}.png", 24, 24, i)
    out = tmp_path / "eval"
    outcome = CliRunner().invoke(main, ["evaluate", "folder", "--data", str(tmp_path / "scans"), "--degradation",
                                        "noise:25", "--seeds", "2", "--output", str(out), "--preset", "cpu-small",
                                        "--iterations", "20", "--device", "cpu", "--quiet"], catch_exceptions=False)
    assert outcome.exit_code == EXIT_OK, outcome.output
    report = CliRunner().invoke(main, ["report", str(out)], catch_exceptions=False)
    assert report.exit_code == 0, report.output
    rows = {r["image_id"]: r for r in results.read_table(str(out)).to_pylist()}
    assert set(rows) == {"s0-s1", "s0-s2", "s1-s1", "s1-s2"}
    assert {r["status"] for r in rows.values()} == {"ok"}
    a, b = rows["s0-s1"], rows["s0-s2"]
    assert a["seed"] != b["seed"] and a["psnr"] != b["psnr"]  # two fits ...
    assert a["psnr_input"] == b["psnr_input"]  # ... of one observation
    seeds = list(csv.DictReader(io.StringIO((out / "seeds.csv").read_text())))
    assert [(r["image"], r["seeds"]) for r in seeds] == [("s0", "2"), ("s1", "2")]
    assert float(seeds[0]["std"]) == pytest.approx(abs(a["psnr"] - b["psnr"]) / 2 ** 0.5, abs=1e-3)
    summary = list(csv.DictReader(io.StringIO((out / "summary.csv").read_text())))
    assert summary[0]["seeds"] == "2" and float(summary[0]["seed_std_mean"]) > 0
    assert "## Over seeds" in (out / "summary.md").read_text()

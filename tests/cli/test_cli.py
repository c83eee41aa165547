"""`dip restore` through Click's runner and as a real subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from pipeline.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
F16 = ROOT / "pipeline" / "samples" / "f16.png"


def test_restore_json_reports_metrics_and_writes_the_image(tmp_path):
    out = tmp_path / "r.png"
    outcome = CliRunner().invoke(main, ["restore", str(F16), "-o", str(out), "--degrade", "noise:25",
                                        "--preset", "cpu-small", "--iterations", "200", "--device", "cpu", "--json"])
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads(outcome.output)
    assert summary["task"] == "denoise" and summary["iterations"] == 200
    assert summary["psnr"] > summary["psnr_input"]  # even a short fit beats the noisy input
    assert Image.open(out).size == (64, 64)


def test_restore_scores_the_calibrated_tv_baseline(tmp_path):
    outcome = CliRunner().invoke(main, ["restore", str(F16), "-o", str(tmp_path / "r.png"), "--degrade", "noise:25",
                                        "--preset", "cpu-small", "--iterations", "5", "--device", "cpu",
                                        "--tv-baseline", "--json"])
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads(outcome.output)
    assert summary["psnr_tv"] > summary["psnr_input"] + 4  # a real baseline, not the noisy input again


def test_restore_errors_name_the_bad_input(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    outcome = CliRunner().invoke(main, ["restore", str(bad), "-o", str(tmp_path / "x.png")])
    assert outcome.exit_code == 1 and str(bad) in outcome.output
    outcome = CliRunner().invoke(main, ["restore", str(F16), "-o", str(tmp_path / "x.png"), "--task", "sr"])
    assert outcome.exit_code == 1 and "needs a scale" in outcome.output
    outcome = CliRunner().invoke(main, ["restore", str(F16), "-o", str(tmp_path / "x.png"), "--device", "tpu9"])
    assert outcome.exit_code == 1 and "tpu9" in outcome.output
    assert not (tmp_path / "x.png").exists()


def test_restore_time_limit_is_an_error(tmp_path):
    outcome = CliRunner().invoke(main, ["restore", str(F16), "-o", str(tmp_path / "x.png"), "--preset", "cpu-small",
                                        "--device", "cpu", "--time-limit", "0.5", "--iterations", "100000"])
    assert outcome.exit_code == 1 and "time limit of 0.5 s" in outcome.output


def test_restore_as_a_subprocess_keeps_alpha_and_grayscale(tmp_path):
    rgba = np.zeros((20, 18, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.arange(18, dtype=np.uint8) * 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "restore", str(tmp_path / "in.png"),
                           "-o", str(out), "--preset", "cpu-small", "--iterations", "5", "--device", "cpu"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    restored = Image.open(out)
    assert restored.mode == "RGBA" and restored.size == (18, 20)
    assert np.array_equal(np.asarray(restored)[..., 3], rgba[..., 3])


def test_submit_passes_every_run_option_through_as_dip_run_spells_it():
    from pipeline.cli.main import main
    from pipeline.cli.submit import _run_arguments

    submit, run = main.commands["submit"], main.commands["run"]
    given = ["--address", "http://head:8265", "--manifest", "m.parquet", "--output", "out", "--time-limit", "5",
             "--no-tiling", "--memory-budget-gb", "2.5", "--pack", "4", "--no-early-stop", "--force"]
    context = submit.make_context("submit", given)
    options = {k: v for k, v in context.params.items() if k not in ("address", "submission_id", "wait")}
    arguments = _run_arguments(options, submit.params)
    received = run.make_context("run", arguments).params
    assert {k: received[k] for k in options} == options
    assert received["time_limit_s"] == 5.0 and received["tiling"] is False and received["pack"] == 4

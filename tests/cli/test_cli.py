"""`dip restore` through Click's runner and as a real subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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
    assert outcome.exit_code == 2 and str(bad) in outcome.output
    outcome = CliRunner().invoke(main, ["restore", str(F16), "-o", str(tmp_path / "x.png"), "--task", "sr"])
    assert outcome.exit_code == 2 and "needs a scale" in outcome.output
    outcome = CliRunner().invoke(main, ["restore", str(F16), "-o", str(tmp_path / "x.png"), "--device", "tpu9"])
    assert outcome.exit_code == 2 and "tpu9" in outcome.output
    assert not (tmp_path / "x.png").exists()


def test_restore_time_limit_is_an_error(tmp_path):
    outcome = CliRunner().invoke(main, ["restore", str(F16), "-o", str(tmp_path / "x.png"), "--preset", "cpu-small",
                                        "--device", "cpu", "--time-limit", "0.5", "--iterations", "100000"])
    assert outcome.exit_code == 1 and "ran past its time limit of 0." in outcome.output
    assert "what --time-limit 0.5 left after" in outcome.output  # the limit covers reading the input too


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


def dip(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli.main", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_restore_refuses_an_unwritable_output_before_fitting(tmp_path):
    # An output that cannot be written fails at once (a 100000-iteration fit would take hours), naming it.
    (tmp_path / "a-file").write_text("x")
    for output, reason in ((tmp_path, "it is a folder"), (tmp_path / "a-file" / "r.png", "is a file, not a folder"),
                           (tmp_path / "y.jpg", "name it .png, .tif or .tiff")):
        done = dip("restore", str(F16), "-o", str(output), "--preset", "cpu-small", "--iterations", "100000",
                   "--device", "cpu")
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and str(output) in done.stderr and reason in done.stderr, done.stderr
    done = dip("restore", str(F16), "-o", str(tmp_path / "r.png"), "--save-degraded", str(tmp_path / "d.png"))
    assert done.returncode == 2 and "--save-degraded needs --degradation" in done.stderr
    assert not (tmp_path / "r.png").exists() and not (tmp_path / "y.jpg").exists()


def test_restore_saves_the_degraded_input_and_prints_strict_json(tmp_path):
    from pipeline.core.images import read
    from pipeline.core.metrics import psnr

    out, degraded = tmp_path / "r.png", tmp_path / "deep" / "d.png"
    outcome = CliRunner().invoke(main, ["restore", str(F16), "-o", str(out), "--degrade", "noise:25", "--save-degraded",
                                        str(degraded), "--preset", "cpu-small", "--iterations", "5", "--device", "cpu",
                                        "--threads", "1", "--json"])
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads(outcome.output)
    assert summary["degraded"] == str(degraded) and summary["threads"] == 1
    seen = read(degraded).pixels  # the observation the fit saw: it scores as the input did
    assert abs(psnr(seen, read(F16).pixels) - summary["psnr_input"]) < 0.05
    # an inpainting whose reference is its input: the input PSNR is infinite, printed as null and named
    kate, mask = ROOT / "pipeline" / "samples" / "kate.png", ROOT / "pipeline" / "samples" / "kate_mask.png"
    outcome = CliRunner().invoke(main, ["restore", str(kate), "-o", str(tmp_path / "k.png"), "--task", "inpaint",
                                        "--mask", str(mask), "--reference", str(kate), "--preset", "cpu-small",
                                        "--iterations", "2", "--device", "cpu", "--json"])
    assert outcome.exit_code == 0, outcome.output

    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    summary = json.loads(outcome.output, parse_constant=refuse)
    assert summary["psnr_input"] is None and summary["non_finite"] == {"psnr_input": "inf", "psnr_baseline": "inf"}


def test_restore_reports_progress_over_every_fit_of_the_image():
    from pipeline.core.images import read
    from pipeline.core.options import Options
    from pipeline.core.restore import restore
    from pipeline.core.synthetic import synthesize

    made = synthesize(read(F16), "noise:25", seed=0)
    calls = []
    restore(made.observed, Options(preset="cpu-small", iterations=100, restarts=2), reference=made.reference,
            progress=lambda done, total, entry: calls.append((done, total, entry)))
    assert [c[0] for c in calls] == list(range(1, 201)) and {c[1] for c in calls} == {200}
    entries = [(done, entry) for done, _, entry in calls if entry is not None]
    assert [done for done, _ in entries] == [50, 100, 150, 200]  # cpu-small checks every 50 iterations
    assert all(entry["loss"] > 0 and entry["psnr_reference"] > 10 for _, entry in entries)


def test_threads_follow_the_image_size_unless_asked():
    from pipeline.cli.restore import PIXELS_PER_THREAD, choose_threads

    assert choose_threads(64 * 64) == 1 and choose_threads(64 * 64, requested=3) == 3
    assert choose_threads(10**9) == len(__import__("os").sched_getaffinity(0)) >= choose_threads(4 * PIXELS_PER_THREAD)


@pytest.mark.integration  # a dip run subprocess with a local Ray of its own
def test_dip_run_on_a_terminal_prints_its_own_lines_only_and_logs_ray_s(tmp_path):
    # A real local Ray, started by the command itself: its log lines (the token notice, Ray Data's
    # plan, the core worker's) go to the run's Ray log, not to the terminal.
    Image.open(F16).crop((0, 0, 16, 16)).save(tmp_path / "a.png")
    assert dip("manifest", str(tmp_path / "a.png"), "-o", str(tmp_path / "m.parquet"), "--degradation",
               "noise:25").returncode == 0
    done = dip("run", "--manifest", str(tmp_path / "m.parquet"), "-o", str(tmp_path / "out"), "--preset", "cpu-small",
               "--iterations", "3", "--device", "cpu", "--num-cpus", "2", timeout=300)
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    for noise in ("INFO", "WARNING", "core_worker", "Progress bars", "Started a local Ray", "token"):
        assert noise not in terminal, terminal
    assert "1 ok, 0 failed" in done.stdout
    logs = list((tmp_path / "out" / "runs").glob("*.ray.log"))
    assert len(logs) == 1 and f"Ray's log: {logs[0]}" in done.stderr
    assert "Started a local Ray instance" in logs[0].read_text()

"""`dip restore` never replaces what it was given, refuses inputs that never end, says a missing
credential in one line, and keeps Ray's local token private."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from pipeline.cli.main import main
from pipeline.cli.options import EXIT_NOT_STARTED
from tests.batch.test_job import png_bytes

ROOT = Path(__file__).resolve().parents[2]
FIT = ["--preset", "cpu-small", "--iterations", "2", "--device", "cpu"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def scan(tmp_path) -> Path:
    path = tmp_path / "scan.png"
    path.write_bytes(png_bytes(24, 20, seed=3))
    return path


@pytest.mark.parametrize("args,fragment", [
    (["-o", "{scan}"], "-o {scan} is INPUT itself"),
    (["-o", "{dir}/./scan.png"], "is INPUT itself"),
    (["-o", "{dir}/link.png"], "is INPUT itself"),  # a symbolic link to the scan
    (["-o", "{dir}/r.png", "--degradation", "noise:25", "--save-degraded", "{scan}"],
     "--save-degraded {scan} is INPUT"),
    (["-o", "{dir}/r.png", "--task", "archive", "--save-mask", "{dir}/r.png"], "-o and --save-mask both name"),
    (["-o", "{dir}/r.png", "--degradation", "noise:25", "--save-degraded", "{dir}/r.png"],
     "-o and --save-degraded both name"),
    (["-o", "{dir}/mask.png", "--task", "inpaint", "--mask", "{dir}/mask.png"], "is the --mask file"),
])
def test_restore_refuses_to_write_over_what_it_was_given(tmp_path, scan, args, fragment):
    (tmp_path / "link.png").symlink_to(scan)
    (tmp_path / "mask.png").write_bytes(png_bytes(24, 20, seed=4))
    before = {p.name: digest(p) for p in tmp_path.iterdir()}
    filled = [a.format(scan=scan, dir=tmp_path) for a in args]
    outcome = CliRunner().invoke(main, ["restore", str(scan), *filled, *FIT])
    assert outcome.exit_code == EXIT_NOT_STARTED, outcome.output
    assert fragment.format(scan=scan, dir=tmp_path) in outcome.output
    assert len(outcome.output.strip().splitlines()) == 1
    assert {p.name: digest(p) for p in tmp_path.iterdir()} == before


def test_overwrite_input_replaces_the_scan_when_asked(scan):
    original = digest(scan)
    outcome = CliRunner().invoke(main, ["restore", str(scan), "-o", str(scan), "--overwrite-input", *FIT])
    assert outcome.exit_code == 0, outcome.output
    assert digest(scan) != original


def test_restore_and_inspect_refuse_a_fifo_and_a_device_at_once(tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    for source, kind in ((fifo, "a FIFO"), ("/dev/zero", "a character device")):
        restored = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "restore", str(source), "-o",
                                   str(tmp_path / "r.png"), *FIT], cwd=ROOT, capture_output=True, text=True,
                                  timeout=60)
        assert restored.returncode == EXIT_NOT_STARTED and kind in restored.stderr, restored.stderr
        inspected = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "inspect", str(source)], cwd=ROOT,
                                   capture_output=True, text=True, timeout=60)
        assert inspected.returncode != 0 and kind in inspected.stderr, inspected.stderr


def test_restore_picks_a_page_of_a_multi_page_tiff_and_refuses_it_without_one(tmp_path):
    pages = tmp_path / "pages.tif"
    with tifffile.TiffWriter(pages) as tif:
        tif.write(np.full((20, 24), 30, np.uint8))
        tif.write(np.full((20, 24), 220, np.uint8))
    refused = CliRunner().invoke(main, ["restore", str(pages), "-o", str(tmp_path / "r.png"), *FIT])
    assert refused.exit_code == EXIT_NOT_STARTED and "2 pages" in refused.output
    picked = CliRunner().invoke(main, ["restore", str(pages), "-o", str(tmp_path / "r.png"), "--page", "1", "--json",
                                       *FIT])
    assert picked.exit_code == 0, picked.output
    inspected = CliRunner().invoke(main, ["inspect", str(pages), "--page", "1"])
    assert inspected.exit_code == 0 and json.loads(inspected.output)["width"] == 24


def test_restore_from_s3_without_credentials_says_so_in_one_line(s3_server, s3_bucket, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"))
    options = json.dumps({"endpoint_url": s3_server.endpoint_url})
    done = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "restore", f"{s3_bucket}/x.png", "-o",
                           str(tmp_path / "r.png"), "--storage-options", options, *FIT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_NOT_STARTED, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "no credentials" in done.stderr, done.stderr


@pytest.mark.integration  # its dip run starts a local Ray
def test_the_local_ray_token_is_private_to_its_owner(tmp_path):
    """`dip run` on a local Ray: the token Ray writes (with the umask, 0644) is made 0600."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("an-earlier-token-" + "x" * 16)
    (home / ".ray" / "auth_token").chmod(0o644)
    from tests.batch.test_manifest import write_manifest

    image = tmp_path / "a.png"
    image.write_bytes(png_bytes(seed=1))
    manifest = write_manifest(str(tmp_path / "m.parquet"), [{"image_id": "a", "uri": str(image)}])
    env = {**os.environ, "HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "run", "--manifest", manifest, "-o",
                           str(tmp_path / "out"), "--num-cpus", "2", "--quiet", *FIT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert stat.S_IMODE((home / ".ray" / "auth_token").stat().st_mode) == 0o600

"""Archival files through the commands: dip restore keeps 16 bits, metadata and provenance; dip
inspect reads them back; an output name that cannot hold the result is refused before fitting."""

import json

import imagecodecs
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from pipeline.cli.main import main
from tests.core.test_archival import ICC, archival_tiff, check_carried, deep


def test_dip_restore_keeps_16_bits_and_metadata_and_inspect_reads_the_provenance(tmp_path):
    (tmp_path / "scan.tif").write_bytes(archival_tiff())
    out = tmp_path / "restored.tif"
    done = CliRunner().invoke(main, ["restore", str(tmp_path / "scan.tif"), "-o", str(out), "--preset", "cpu-small",
                                     "--iterations", "3", "--device", "cpu", "--seed", "5"])
    assert done.exit_code == 0, done.output
    written = tifffile.imread(out)
    assert written.dtype == np.uint16 and np.any(written % 257)
    check_carried(out.read_bytes(), "tiff", dpi=600, exif_sub_ifd=False)
    shown = CliRunner().invoke(main, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["bit_depth"] == 16 and report["icc_bytes"] == len(ICC) and report["dpi"][0] == pytest.approx(600)
    assert report["provenance"]["task"] == "denoise" and report["provenance"]["seed"] == 5
    assert report["provenance"]["iterations"] == 3 and report["provenance"]["preset"] == "cpu-small"


def test_an_output_name_that_cannot_hold_the_result_is_refused_before_fitting(tmp_path):
    (tmp_path / "in.png").write_bytes(imagecodecs.png_encode(deep()))
    done = CliRunner().invoke(main, ["restore", str(tmp_path / "in.png"), "-o", str(tmp_path / "y.jpg"),
                                     "--iterations", "100000", "--device", "cpu"])
    assert done.exit_code == 2 and "y.jpg" in done.output and "cannot write" in done.output
    assert not (tmp_path / "y.jpg").exists()

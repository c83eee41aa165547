"""benchmarks/ as the docs rely on it: results files with one schema, naming their commit; the
benchmarks page generated from them; no test depending on benchmark code. This module is the one
test that imports benchmarks (its layout is what it checks)."""

import ast
import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

from benchmarks import common, tables
from pipeline.core.images import Picture

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMMIT = re.compile(r"[0-9a-f]{40}(-dirty)?")
# the benchmarks benchmarks/gpu_session.sh runs on a bare GPU machine: torch, numpy, Pillow, scikit-image
GPU_SESSION = ("fit_speed", "profile_step", "layer_speed", "packing_speed", "stop_rules", "paper_tables", "archive")


def test_no_test_imports_or_loads_benchmark_code():
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name == Path(__file__).name:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            strings = [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []
            if any(n == "benchmarks" or n.startswith("benchmarks.") for n in names) or \
                    any(re.search(r"benchmarks/\w+\.py", s) or s == "benchmarks" for s in strings):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_benchmarks_run_as_modules_with_no_sys_path_edits():
    found = [f"{p.relative_to(ROOT)}" for p in (ROOT / "benchmarks").glob("*") if p.is_file()
             and "sys.path" in p.read_text()]
    assert found == []


def test_every_results_file_is_benchmark_slash_device_json_with_the_schema():
    files = sorted(p for p in RESULTS.rglob("*") if p.is_file())
    assert files, "no results files"
    for path in files:
        relative = path.relative_to(RESULTS)
        assert len(relative.parts) == 2 and path.suffix == ".json", f"{relative}: not <benchmark>/<device>.json"
        record = json.loads(path.read_text())
        assert set(common.SCHEMA) <= set(record) <= {*common.SCHEMA, "commit_note"}, f"{relative}: {sorted(record)}"
        assert record["benchmark"] == path.parent.name and record["device"] == path.stem, relative
        assert COMMIT.fullmatch(record["commit"]), f"{relative}: commit {record['commit']!r}"
        datetime.fromisoformat(record["date"])  # ISO 8601


def test_the_benchmarks_page_is_what_the_results_give():
    assert tables.check(), "docs/benchmarks.md is stale: run python -m benchmarks.tables"


def test_write_results_writes_the_schema_and_the_latest_run_only(tmp_path):
    device = common.Device("cpu", "cpu (test)")
    common.write_results("stop_rules-tiny-8", device, {"run": 1}, command="python -m x", root=tmp_path)
    path = common.write_results("stop_rules-tiny-8", device, {"run": 2}, command="python -m x", root=tmp_path)
    assert path == tmp_path / "stop_rules-tiny-8" / "cpu.json"
    record = common.read_results(path)
    assert list(record) == list(common.SCHEMA) and record["results"] == {"run": 2}
    assert COMMIT.fullmatch(record["commit"]) and record["torch"] == torch.__version__
    assert [p.name for p in path.parent.iterdir()] == ["cpu.json"]
    with pytest.raises(ValueError, match="Stop Rules"):
        common.write_results("Stop Rules", device, {}, root=tmp_path)


def test_centre_crop_cuts_the_centre_of_odd_sizes_and_refuses_a_crop_too_large():
    pixels = torch.arange(37 * 31, dtype=torch.float32).reshape(1, 1, 37, 31) / (37 * 31)  # [1, 1, H, W]
    picture = Picture(pixels=pixels, alpha=torch.ones(1, 1, 37, 31), bit_depth=16)
    crop = common.centre_crop(picture, 9)
    assert crop.pixels.shape == (1, 1, 9, 9) and crop.alpha.shape == (1, 1, 9, 9) and crop.bit_depth == 16
    assert torch.equal(crop.pixels, pixels[..., 14:23, 11:20])  # top (37 - 9) // 2, left (31 - 9) // 2
    assert torch.equal(common.centre_crop(picture, 4, top_left=(0, 27)).pixels, pixels[..., 0:4, 27:31])
    assert common.centre_crop(picture, 0) is picture  # 0: the full image
    with pytest.raises(ValueError, match="does not fit in a 31x37 picture"):
        common.centre_crop(picture, 32)


def test_the_gpu_session_benchmarks_import_nothing_beyond_the_core():
    code = ("import sys; import " + ", ".join(f"benchmarks.{name}" for name in GPU_SESSION) + "; "
            "print(sorted(m for m in ('ray', 'fsspec', 'click', 'pyarrow', 's3fs', 'rich', 'matplotlib') "
            "if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]", found.stdout + found.stderr

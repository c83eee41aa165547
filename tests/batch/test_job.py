"""The batch job end to end on real local Ray: outputs, error rows, resume, exit codes."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline import storage
from pipeline.batch import results
from pipeline.cli.main import main
from pipeline.cli.options import EXIT_IMAGES_FAILED, EXIT_NOT_STARTED, EXIT_OK
from tests.batch.test_manifest import write_manifest


def png_bytes(width=24, height=20, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 / width, yy * 255 / height, 128 + 0 * xx], -1) + rng.normal(0, 3, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_dataset(prefix: str, storage_options=None) -> str:
    """Three images (one of them not an image) and a manifest under ``prefix``."""
    storage.write_bytes(storage.join(prefix, "in", "a.png"), png_bytes(seed=1), storage_options)
    storage.write_bytes(storage.join(prefix, "in", "b.png"), png_bytes(32, 24, seed=2), storage_options)
    storage.write_bytes(storage.join(prefix, "in", "c.png"), b"this is not a png", storage_options)
    rows = [
        {"image_id": "a", "uri": storage.join(prefix, "in", "a.png"), "degradation": "noise:25", "box": "B1"},
        {"image_id": "b", "uri": storage.join(prefix, "in", "b.png"), "degradation": "downsample:2", "box": "B2"},
        {"image_id": "c", "uri": storage.join(prefix, "in", "c.png"), "box": "B3"},
    ]
    return write_manifest(storage.join(prefix, "manifest.parquet"), rows, storage_options)


def dip_run(manifest: str, output: str, *extra: str):
    args = ["run", "--manifest", manifest, "--output", output, "--preset", "cpu-small", "--iterations", "3",
            "--device", "cpu", "--quiet", *extra]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def result_files(output: str, storage_options=None) -> list[str]:
    prefix = storage.join(output, "results")
    return sorted(storage.list_files(prefix, storage_options)) if storage.exists(prefix, storage_options) else []


def test_run_writes_images_rows_record_and_marker_and_resumes(ray_local, tmp_path, monkeypatch):
    manifest = make_dataset(str(tmp_path / "data"))
    output = str(tmp_path / "out")

    # 1. First run: two images ok, the text file is an error row; the batch goes on.
    outcome = dip_run(manifest, output)
    assert outcome.exit_code == EXIT_IMAGES_FAILED, outcome.output
    assert sorted(p.name for p in (tmp_path / "out" / "restored").iterdir()) == ["a.png", "b.png"]
    table = results.read_table(output).to_pylist()
    by_id = {row["image_id"]: row for row in table}
    assert set(by_id) == {"a", "b", "c"}
    assert by_id["a"]["status"] == "ok" and by_id["a"]["psnr"] is not None and by_id["a"]["box"] == "B1"
    assert by_id["b"]["task"] == "sr" and by_id["b"]["psnr_baseline"] is not None
    assert by_id["c"]["status"] == "error" and "c.png" in by_id["c"]["error"]
    assert Image.open(tmp_path / "out" / "restored" / "b.png").size == (32, 24)
    assert by_id["b"]["degraded_uri"] == str(tmp_path / "out" / "degraded" / "b.png")
    assert by_id["c"]["degraded_uri"] is None
    assert Image.open(by_id["b"]["degraded_uri"]).size == (16, 12)  # what the x2 fit saw
    assert Image.open(by_id["a"]["degraded_uri"]).size == (24, 20)
    assert all(row["attempt"] == 1 and row["iterations"] in (3, None) for row in table)
    for column in ("config_hash", "seed", "run_id", "started_at", "finished_at", "device", "seconds"):
        assert all(row[column] is not None for row in table), column
    record = json.loads(next((tmp_path / "out" / "runs").glob("*.json")).read_text())
    assert record["counts"] == {"total": 3, "skipped": 0, "ok": 2, "failed": 1, "unrecorded": 0, "retried": 0,
                                "passes": 1}
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert [Path(u).name.split("-")[0] for u in result_files(output)] == ["compacted"]  # the run's shards, folded

    # 2. Same command again: only the failed image is fitted again (attempt 2).
    outcome = dip_run(manifest, output)
    assert outcome.exit_code == EXIT_IMAGES_FAILED
    new = [r for r in results.read_table(output).to_pylist() if r["run_id"] != table[0]["run_id"]]
    assert [(r["image_id"], r["attempt"], r["status"]) for r in new] == [("c", 2, "error")]

    # 3. The bad file is replaced by a good one: the rerun fits it and exits 0.
    storage.write_bytes(str(tmp_path / "data" / "in" / "c.png"), png_bytes(seed=3))
    outcome = dip_run(manifest, output)
    assert outcome.exit_code == EXIT_OK, outcome.output
    ok_rows = [r for r in results.read_table(output).to_pylist() if r["status"] == "ok"]
    assert sorted(r["image_id"] for r in ok_rows) == ["a", "b", "c"]  # one ok row per image

    # 4. Nothing left to do: no fit at all, and no Ray asked for; --force redoes every image.
    before = result_files(output)
    connected = []
    with monkeypatch.context() as patched:
        patched.setattr("pipeline.batch.job.start_ray", lambda *args: connected.append(args))
        outcome = CliRunner().invoke(main, ["run", "--manifest", manifest, "--output", output, "--preset", "cpu-small",
                                            "--iterations", "3", "--device", "cpu"])
        assert outcome.exit_code == EXIT_OK and connected == [], outcome.output
        assert "3 already done, nothing to fit" in outcome.output and "0/0" not in outcome.output
        missing = CliRunner().invoke(main, ["run", "--manifest", str(tmp_path / "nothing.parquet"), "-o", output])
        assert missing.exit_code == EXIT_NOT_STARTED and connected == []
        assert f"manifest {tmp_path / 'nothing.parquet'}: no such file or folder" in missing.output
        (tmp_path / "a-file").write_text("x")
        under = CliRunner().invoke(main, ["run", "--manifest", manifest, "-o", str(tmp_path / "a-file" / "out")])
        assert under.exit_code == EXIT_NOT_STARTED and connected == []
        assert f"{tmp_path / 'a-file'} is a file, not a folder" in under.output
    assert result_files(output) == before
    rows = len(results.read_table(output))
    assert dip_run(manifest, output, "--force").exit_code == EXIT_OK
    assert len(results.read_table(output)) == rows + 3


def test_same_image_same_seed_gives_the_same_restoration(ray_local, tmp_path):
    manifest = make_dataset(str(tmp_path / "data"))
    dip_run(manifest, str(tmp_path / "one"))
    dip_run(manifest, str(tmp_path / "two"))
    a = np.asarray(Image.open(tmp_path / "one" / "restored" / "a.png"))
    b = np.asarray(Image.open(tmp_path / "two" / "restored" / "a.png"))
    assert np.array_equal(a, b)


def test_an_invalid_manifest_runs_nothing_and_names_the_rows(ray_local, tmp_path):
    url = write_manifest(str(tmp_path / "m.parquet"), [
        {"image_id": "good", "uri": "x.png"}, {"image_id": "../evil", "uri": "y.png"}])
    outcome = dip_run(url, str(tmp_path / "out"))
    assert outcome.exit_code == EXIT_NOT_STARTED
    assert "row 2" in outcome.output and "../evil" in outcome.output
    assert not (tmp_path / "out" / "restored").exists() and not (tmp_path / "out" / "results").exists()
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_run_on_s3(ray_local, s3_server, s3_bucket):
    options = s3_server.storage_options
    manifest = make_dataset(f"{s3_bucket}/data", options)
    output = f"{s3_bucket}/out"
    outcome = dip_run(manifest, output, "--storage-options", json.dumps(options))
    assert outcome.exit_code == EXIT_IMAGES_FAILED, outcome.output
    restored = sorted(u.rsplit("/", 1)[-1] for u in storage.list_files(f"{output}/restored", options))
    assert restored == ["a.png", "b.png"]
    rows = results.read_table(output, options).to_pylist()
    assert sorted((r["image_id"], r["status"]) for r in rows) == [("a", "ok"), ("b", "ok"), ("c", "error")]
    assert storage.exists(f"{output}/_SUCCESS", options)
    # No credential anywhere in what was written.
    secret = s3_server.secret_key
    for url in storage.list_files(output, options):
        assert secret.encode() not in storage.read_bytes(url, options), url


def test_manifest_command_lists_images(tmp_path):
    for name in ("x.png", "sub/y.jpg", "notes.txt", "with space.png"):
        path = tmp_path / "imgs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    out = tmp_path / "m.parquet"
    outcome = CliRunner().invoke(main, ["manifest", str(tmp_path / "imgs"), "--task", "denoise", "-o", str(out)])
    assert outcome.exit_code == 0, outcome.output
    rows = pq.read_table(out).to_pylist()
    ids = sorted(r["image_id"] for r in rows)
    assert len(ids) == 3 and "x" in ids and "sub__y" in ids  # no extension: outputs are restored/x.png
    assert all(storage.safe_key(i) == i for i in ids)
    assert all(Path(r["uri"]).exists() for r in rows)


def test_manifest_ids_keep_the_extension_only_where_stems_clash_and_patterns_attach_masks(tmp_path):
    for name in ("a.png", "a.jpg", "b.tif", "b_mask.png", "c.png", "c_mask.png"):
        (tmp_path / "scans").mkdir(exist_ok=True)
        (tmp_path / "scans" / name).write_bytes(b"x")
    out = tmp_path / "m.parquet"
    outcome = CliRunner().invoke(main, ["manifest", str(tmp_path / "scans" / "*.*"), "-o", str(out), "--task",
                                        "inpaint", "--mask-pattern", "{stem}_mask.png"])
    assert outcome.exit_code == EXIT_NOT_STARTED  # a.png and a.jpg have no mask: named, nothing written
    assert f"{tmp_path / 'scans' / 'a.jpg'} has no mask {tmp_path / 'scans' / 'a_mask.png'}" in outcome.output
    assert not out.exists()
    for name in ("a.png", "a.jpg"):
        (tmp_path / "scans" / name).unlink()
    outcome = CliRunner().invoke(main, ["manifest", str(tmp_path / "scans" / "*.*"), "-o", str(out), "--task",
                                        "inpaint", "--mask-pattern", "{stem}_mask.png"])
    assert outcome.exit_code == 0, outcome.output
    rows = {r["image_id"]: r for r in pq.read_table(out).to_pylist()}
    assert set(rows) == {"b", "c"}  # the masks are no images of their own
    assert rows["b"]["mask_uri"] == str(tmp_path / "scans" / "b_mask.png")
    from pipeline.batch.manifest import image_ids, listing_rows

    assert image_ids(["a.png", "a.jpg", "x/b.tif", "c.PNG"]) == ["a.png", "a.jpg", "x__b", "c"]
    with pytest.raises(ValueError, match="pattern '{base}.png' is not usable"):
        listing_rows(str(tmp_path / "scans"), mask_pattern="{base}.png")


def test_look_alike_columns_warn_and_strict_refuses_them(ray_local, tmp_path):
    make_dataset(str(tmp_path / "data"))
    table = pq.read_table(tmp_path / "data" / "manifest.parquet")
    typo = tmp_path / "typo.parquet"
    pq.write_table(table.append_column("tsak", [["denoise"] * len(table)]), typo)
    from pipeline.batch.manifest import look_alike

    assert [look_alike(n) for n in ("tsak", "mask-uri", "Task", "degredation", "url", "year", "box", "task")] == [
        "task", "mask_uri", "task", "degradation", "uri", None, None, None]
    strict = CliRunner().invoke(main, ["run", "--manifest", str(typo), "-o", str(tmp_path / "out"), "--strict"])
    assert strict.exit_code == EXIT_NOT_STARTED
    assert "column 'tsak' looks like 'task'" in strict.output and not (tmp_path / "out" / "results").exists()
    loose = dip_run(str(typo), str(tmp_path / "out"))
    assert "warning: column 'tsak' looks like 'task'" in loose.output


def test_the_driver_keeps_a_bounded_sample_of_rows():
    from pipeline.batch.job import KEEP_FAILED, KEEP_OK, RunSummary

    summary = RunSummary(run_id="r", total=5000)
    for i in range(2500):
        summary.add({"image_id": str(i), "status": "ok" if i % 2 else "error"})
    assert (summary.ok, summary.failed) == (1250, 1250)
    assert len(summary.rows) == KEEP_OK + KEEP_FAILED


def test_the_demo_says_where_its_outputs_are_and_what_to_try_next(ray_local, tmp_path):
    out = tmp_path / "demo"
    outcome = CliRunner().invoke(main, ["demo", "-o", str(out), "--iterations", "2"], catch_exceptions=False)
    assert outcome.exit_code == EXIT_OK, outcome.output
    assert f"{out}/restored/" in outcome.output and f"dip report {out}" in outcome.output
    assert sorted(p.name for p in (out / "restored").iterdir()) == ["f16-noise25.png", "kate-text.png", "zebra-x4.png"]
    assert sorted(p.name for p in (out / "degraded").iterdir()) == ["f16-noise25.png", "zebra-x4.png"]
    command = next(line for line in outcome.output.splitlines() if "dip restore" in line).split("dip restore ", 1)[1]
    tried = CliRunner().invoke(main, ["restore", *command.split(), "--iterations", "2", "--device", "cpu"])
    assert tried.exit_code == 0, tried.output  # the suggested command runs as printed
    assert (out / "f16.png").exists() and (out / "f16-noisy.png").exists()

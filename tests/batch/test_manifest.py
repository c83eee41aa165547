import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.batch.manifest import ManifestError, derive_seed, plan, resolve
from pipeline.core.options import Options

DEFAULTS = Options(task="denoise", preset="cpu-small")


def write_manifest(url: str, rows: list[dict], storage_options: dict | None = None) -> str:
    """A manifest with the union of the rows' columns (missing values null); for tests."""
    columns = sorted({k for row in rows for k in row}) or ["image_id", "uri"]
    table = pa.table({c: [row.get(c) for row in rows] for c in columns} if rows else
                     {c: pa.array([], pa.string()) for c in columns})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(url, sink.getvalue().to_pybytes(), storage_options)
    return url


def test_rows_resolve_over_defaults_and_carry_extra_columns():
    job = resolve({"image_id": "a1", "uri": "x.png", "params": json.dumps({"iterations": 7}),
                   "archive_box": "B12", "year": 1931}, DEFAULTS)
    assert job.options.iterations == 7 and job.options.task == "denoise" and job.options.preset == "cpu-small"
    assert job.extra == {"archive_box": "B12", "year": 1931}
    assert job.options.seed == derive_seed(0, "a1")


def test_degradation_sets_the_task_and_scale():
    job = resolve({"image_id": "z", "uri": "z.png", "degradation": "downsample:4"}, DEFAULTS)
    assert job.options.task == "sr" and job.options.scale == 4


def test_config_hash_changes_with_the_configuration_but_not_the_device():
    base = {"image_id": "a", "uri": "a.png"}
    h = resolve(base, DEFAULTS).config_hash
    assert resolve(base, Options(task="denoise", preset="cpu-small", device="cuda")).config_hash == h
    assert resolve({**base, "params": '{"iterations": 5}'}, DEFAULTS).config_hash != h
    assert resolve({**base, "uri": "b.png"}, DEFAULTS).config_hash != h


def test_seeds_derive_from_the_id_and_a_seed_column_wins():
    a = resolve({"image_id": "a", "uri": "a.png"}, DEFAULTS).options.seed
    b = resolve({"image_id": "b", "uri": "b.png"}, DEFAULTS).options.seed
    assert a != b and a == resolve({"image_id": "a", "uri": "a.png"}, DEFAULTS).options.seed
    assert resolve({"image_id": "a", "uri": "a.png", "seed": 5}, DEFAULTS).options.seed == 5


def test_a_degradation_seed_draws_the_degradation_and_enters_the_hash_only_when_given():
    row = {"image_id": "a", "uri": "a.png", "degradation": "noise:25"}
    plain, seeded = resolve(row, DEFAULTS), resolve({**row, "degradation_seed": 7}, DEFAULTS)
    assert plain.degradation_seed is None and seeded.degradation_seed == 7
    assert seeded.options.seed == plain.options.seed  # the fit's seed is the image's, as before
    assert seeded.config_hash != plain.config_hash != resolve({**row, "degradation_seed": 8}, DEFAULTS).config_hash
    assert resolve({**row, "degradation_seed": None}, DEFAULTS).config_hash == plain.config_hash
    assert type(seeded).from_row(seeded.to_row()) == seeded  # through the plan
    assert type(plain).from_row({**plain.to_row(), "degradation_seed": float("nan")}) == plain  # a null, via Ray


@pytest.mark.parametrize("row,message", [
    ({"image_id": "a", "uri": "a.png", "degradation_seed": 3}, "degradation_seed 3 is given but the row has no "
                                                                "degradation"),
    ({"image_id": "a", "uri": "a.png", "degradation": "noise:25", "degradation_seed": "x"},
     "degradation_seed must be an integer, got 'x'"),
    ({"image_id": "a", "uri": "a.png", "task": "deblur"}, "deblur"),
    ({"image_id": "../a", "uri": "a.png"}, "not usable as a storage key"),
    ({"image_id": "/etc/passwd", "uri": "a.png"}, "not usable as a storage key"),
    ({"image_id": "a\x00b", "uri": "a.png"}, "not usable as a storage key"),
    ({"image_id": "a" * 1000, "uri": "a.png"}, "not usable as a storage key"),
    ({"image_id": "a", "uri": "a.png", "task": "inpaint"}, "needs a mask .*mask_uri"),
    ({"image_id": "a", "uri": "a.png", "task": "sr"}, "needs a scale"),
    ({"image_id": "a", "uri": "a.png", "params": "{iterations: 5"}, "not valid JSON"),
    ({"image_id": "a", "uri": "a.png", "params": '{"iters": 5}'}, "'iters'"),
    ({"image_id": "a", "uri": "a.png", "params": '{"iterations": "many"}'}, "iterations"),
    ({"image_id": "a", "uri": "a.png", "degradation": "blur:3"}, "blur:3"),
    ({"image_id": "a", "uri": None}, "uri"),
])
def test_bad_rows_are_named(row, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        resolve(row, DEFAULTS)


def test_plan_names_every_bad_row_and_yields_nothing_past_them():
    url = write_manifest("memory://m/bad.parquet", [
        {"image_id": "ok1", "uri": "a.png"},
        {"image_id": "dup", "uri": "b.png"},
        {"image_id": "dup", "uri": "c.png"},
        {"image_id": "x", "uri": "d.png", "task": "nope"},
    ])
    with pytest.raises(ManifestError) as info:
        list(plan(url, DEFAULTS))
    text = str(info.value)
    assert "2 of 4 rows are invalid" in text and "row 3" in text and "duplicate image_id 'dup'" in text
    assert "row 4" in text and "'nope'" in text


@pytest.mark.parametrize("content,message", [
    (b"not parquet at all", "not a readable Parquet"),
])
def test_a_file_that_is_not_parquet_is_refused(content, message):
    storage.write_bytes("memory://m/junk.parquet", content)
    with pytest.raises(ManifestError, match=message):
        list(plan("memory://m/junk.parquet", DEFAULTS))


def test_missing_uri_column_and_empty_manifest_are_refused():
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"image_id": ["a"]}), sink)
    storage.write_bytes("memory://m/nouri.parquet", sink.getvalue().to_pybytes())
    with pytest.raises(ManifestError, match="lacks the required column.*uri"):
        list(plan("memory://m/nouri.parquet", DEFAULTS))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"image_id": pa.array([], pa.string()), "uri": pa.array([], pa.string())}), sink)
    storage.write_bytes("memory://m/empty.parquet", sink.getvalue().to_pybytes())
    with pytest.raises(ManifestError, match="no rows"):
        list(plan("memory://m/empty.parquet", DEFAULTS))


def test_config_hashes_written_by_earlier_releases_stay_the_same():
    """A rerun must skip what an earlier release restored: new options at their default (and new
    fields of the early-stopping config) leave the hash as it was. The hashes below were computed
    by the release before those options existed."""
    rows = [({"image_id": "f16", "uri": "s3://b/f16.png", "degradation": "noise:25"}, Options(preset="cpu-small")),
            ({"image_id": "scan-1", "uri": "s3://b/scan-1.tif", "task": "sr", "scale": 4}, Options()),
            ({"image_id": "p", "uri": "p.png", "task": "inpaint", "mask_uri": "m.png",
              "params": '{"iterations": 500}'}, Options(early_stop=True))]
    hashes = [resolve(row, defaults).config_hash for row, defaults in rows]
    assert hashes == ["501a092d30abfadc", "8d381efc506663f8", "de4bab44d29e2a11"]


def test_configuration_hashes_written_by_earlier_versions_stand():
    """A rerun refits nothing: these hashes were computed by the code of fe6e4a3 (2026-12-05, before
    the warm starts' options were removed) for the same rows; an option added or removed at its
    default must leave them as they are (``pipeline.core.config.ADDED_LATER``)."""
    rows = [
        ({"image_id": "scan-1", "uri": "s3://b/scan-1.tif"}, Options(), "e36a3deb6025dcb1"),
        ({"image_id": "scan-2", "uri": "x.png", "degradation": "noise:25"}, Options(preset="cpu-small"),
         "e2bfa2dc7475311c"),
        ({"image_id": "scan-3", "uri": "x.tif", "task": "archive", "params": json.dumps({"iterations": 500})},
         Options(), "ef71d23e22e25f39"),
        ({"image_id": "scan-4", "uri": "x.png", "task": "sr", "scale": 4, "seed": 7}, Options(early_stop=True),
         "865faf1381d22e55"),
    ]
    assert [resolve(row, defaults).config_hash for row, defaults, _ in rows] == [h for _, _, h in rows]


def test_a_collection_column_is_an_ordinary_catalogue_column():
    job = resolve({"image_id": "a", "uri": "x.png", "collection": "box-7"}, DEFAULTS)
    assert job.extra == {"collection": "box-7"}

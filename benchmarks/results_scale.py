"""Results at archive scale: the done check, a rerun's plan and ``dip report`` over 10k-1M result rows.

For each size N and storage (a local folder; with ``--s3`` also a SeaweedFS S3 server):

1. A manifest of N rows; its plan on an empty output (``write_plan``: validation, resume check, plan written).
2. Result rows for 90% of it, fabricated with the project's own writer (``results.ShardWriter``,
   1,000 rows a shard, each row with a 31-entry history), as a finished run leaves them.
3. In fresh processes, each timed with its peak memory (VmHWM): the done check
   (``results.done_index``), the rerun's plan (90% done), and ``dip report``.
4. Storage requests per image of the real write path: the fit actor (``FitActor``, no Ray) on a
   plan of small images with 1-iteration fits, counting the calls of ``pipeline.storage`` (one
   ``write_bytes`` is one PUT for objects under s3fs's 5 MiB block; a ``delete`` call is one batched
   request per 1,000 keys on S3), the fit claims and their removal at the run's end included.

    python -m benchmarks.results_scale [--rows 10000,100000,1000000] [--s3] [--actor-images 3000]
    python -m benchmarks.results_scale --rows ''                 # only the storage requests (4.)

Writes ``benchmarks/results/results_scale/cpu.json`` (1.-3.) and ``results_scale-requests/cpu.json``
(4.). --s3 needs the test extra (the tests' SeaweedFS launcher, ``tests.conftest.make_s3_server``).
Nothing else may run meanwhile (timings).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import RESULTS, ROOT, write_results
from pipeline import storage
from pipeline.batch import results

RUN_ID = "bench"
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
HISTORY = json.dumps([{"iteration": i * 100, "loss": 0.01 / (i + 1), "psnr_observation": 20 + i / 10,
                       "psnr_reference": 25 + i / 20, "seconds": i * 1.5} for i in range(31)])


def write_manifest(prefix: str, rows: int, options: dict | None) -> str:
    ids = [f"photo-{i:08d}" for i in range(rows)]
    table = pa.table({"image_id": ids, "uri": [storage.join(prefix, "scans", f"{i}.tif") for i in ids],
                      "box": [f"B{i % 977}" for i in range(rows)]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=50_000)
    url = storage.join(prefix, "manifest.parquet")
    storage.write_bytes(url, sink.getvalue().to_pybytes(), options)
    return url


def fabricate(output: str, plan: str, share: float, options: dict | None) -> int:
    """Result rows for the first ``share`` of the plan's images, as the fit actors write them."""
    table = pq.read_table(pa.BufferReader(storage.read_bytes(plan, options)), columns=["image_id", "config_hash"])
    done = int(len(table) * share)
    shards = results.ShardWriter(output, RUN_ID, options, writer_id="fabricated")
    for i, (image_id, config_hash) in enumerate(zip(table["image_id"].to_pylist()[:done],
                                                    table["config_hash"].to_pylist()[:done], strict=True)):
        shards.add({"image_id": image_id, "uri": f"scans/{image_id}.tif", "task": "denoise", "preset": "default",
                    "status": "ok", "output_uri": f"restored/{image_id}.png", "psnr": 30 + (i % 7) / 10,
                    "ssim": 0.9, "psnr_input": 20.2, "psnr_baseline": 20.2, "noise_sigma": 24.8,
                    "stop_rule": "discrepancy", "iterations": 3000, "best_iteration": 2400, "stopped_early": True,
                    "backtracks": 0, "seconds": 61.5, "device": "cuda:0", "packed": 1, "tiles": 1, "attempt": 1,
                    "config_hash": config_hash, "seed": i, "run_id": RUN_ID, "started_at": T0,
                    "finished_at": T0 + dt.timedelta(seconds=i), "history": HISTORY, "box": f"B{i % 977}"})
    shards.flush()
    return shards.written


MEASURE = """
import time, json

def peak_mib():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over the exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return round(int(line.split()[1]) / 1024, 1)

options = json.loads(%(options)r)
%(imports)s
imported = peak_mib()
start = time.perf_counter()
%(code)s
print(json.dumps({"seconds": round(time.perf_counter() - start, 2), "peak_rss_mib": peak_mib(),
                  "rss_after_imports_mib": imported, **figures}))
"""
CODE = {  # step: (imports, the work timed)
    "done_check": ("from pipeline.batch import results",
                   "figures = {'keys': results.done_index(%(output)r, options).num_rows}"),
    "plan": ("from pipeline.batch.job import RunConfig, write_plan\nfrom pipeline.core.options import Options",
             "config = RunConfig(manifest=%(manifest)r, output=%(output)r, storage_options=options)\n"
             "_, s = write_plan(config, %(run_id)r)\n"
             "figures = {'total': s.total, 'skipped': s.skipped}"),
    "report": ("import io\nfrom rich.console import Console\nfrom pipeline.evaluation.report import write_report\n"
               "import matplotlib.figure",
               "write_report(%(output)r, options, console=Console(file=io.StringIO()))\nfigures = {}"),
}


def measure(step: str, **values) -> dict:
    """One step in a fresh Python: its seconds and its peak resident memory."""
    imports, work = CODE[step]
    code = MEASURE % {"options": json.dumps(values.get("options") or {}), "imports": imports,
                      "code": work % values}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          cwd=ROOT)  # `python -c` imports pipeline from the checkout's root
    if done.returncode:
        raise RuntimeError(f"{step} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def scale(prefix: str, rows: int, options: dict | None) -> dict:
    manifest = write_manifest(prefix, rows, options)
    output = storage.join(prefix, "out")
    found = {"rows": rows, "plan_fresh": measure("plan", manifest=manifest, output=output, run_id=RUN_ID,
                                                 options=options)}
    start = time.perf_counter()
    shards = fabricate(output, storage.join(output, "runs", f"{RUN_ID}.plan.parquet"), 0.9, options)
    found["fabricated"] = {"result_rows": int(rows * 0.9), "shards": shards,
                           "seconds": round(time.perf_counter() - start, 1)}
    found["done_check"] = measure("done_check", output=output, options=options)
    found["plan_rerun_90pct_done"] = measure("plan", manifest=manifest, output=output, run_id="rerun",
                                             options=options)
    found["report"] = measure("report", output=output, options=options)
    print(json.dumps(found), flush=True)
    return found


def actor_requests(folder: Path, images: int) -> dict:
    """Storage calls of the fit actor's real write path, per image (local folder, counted in process)."""
    import io

    import numpy as np
    from PIL import Image

    from pipeline.batch import claims
    from pipeline.batch.actor import FitActor
    from pipeline.batch.compact import compact
    from pipeline.batch.job import RunConfig, write_plan
    from pipeline.core.options import Options

    rng = np.random.default_rng(0)
    rows = []
    for i in range(images):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
        path = folder / "in" / f"img{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
        rows.append({"image_id": f"img{i:05d}", "uri": str(path)})
    pq.write_table(pa.Table.from_pylist(rows), folder / "manifest.parquet")
    config = RunConfig(manifest=str(folder / "manifest.parquet"), output=str(folder / "out"),
                       defaults=Options(preset="cpu-small", iterations=1, device="cpu"))
    plan, _ = write_plan(config, "actor")
    counts = {"write_bytes": 0, "read_bytes": 0, "list": 0, "delete": 0}
    originals = {name: getattr(storage, name)
                 for name in ("write_bytes", "read_bytes", "list_dir", "list_files", "delete")}

    def counting(name, key):
        def call(*args, **kwargs):
            counts[key] += 1
            return originals[name](*args, **kwargs)
        return call

    for name, key in (("write_bytes", "write_bytes"), ("read_bytes", "read_bytes"), ("list_dir", "list"),
                      ("list_files", "list"), ("delete", "delete")):
        setattr(storage, name, counting(name, key))
    try:
        actor = FitActor(config.output, "actor", {}, max_pixels=10**6, threads=1)
        table = pq.read_table(plan)
        for start in range(0, len(table), 64):
            actor(table.slice(start, 64).to_pydict())
        actor.shards.flush()
        shards = actor.shards.written
        claims.remove(config.output, "actor")  # as the run's end does
        compact(config.output)
    finally:
        for name, original in originals.items():
            setattr(storage, name, original)
    return {"images": images, "shards": shards, **counts,
            "writes_per_image": round(counts["write_bytes"] / images, 4),
            "result_writes_per_1000_rows": round(shards / images * 1000, 2)}


def sizes(text: str) -> list[int]:
    """Manifest sizes from "10000,100000" ('' for none)."""
    return [int(part) for part in text.split(",") if part]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000,1000000", help="Manifest sizes; '' for none (only the "
                        "actor's storage requests).")
    parser.add_argument("--s3", action="store_true", help="Also on a SeaweedFS server (needs the test extra).")
    parser.add_argument("--s3-rows", default=None, help="Sizes on S3 (default: --rows).")
    parser.add_argument("--actor-images", type=int, default=3000)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    report = {"local": [], "s3": []}
    with tempfile.TemporaryDirectory() as tmp:
        if args.actor_images:
            requests = actor_requests(Path(tmp) / "actor", args.actor_images)
            print(json.dumps(requests), flush=True)
            print(f"wrote {write_results('results_scale-requests', 'cpu', requests, root=args.results_dir)}")
        if not sizes(args.rows) and not (args.s3 and sizes(args.s3_rows or args.rows)):
            return
        for rows in sizes(args.rows):
            report["local"].append(scale(f"{tmp}/local-{rows}", rows, None))
        if args.s3:
            from tests.conftest import make_s3_server  # the tests' SeaweedFS launcher (the test extra)

            (Path(tmp) / "weed").mkdir()
            server = make_s3_server(Path(tmp) / "weed")
            server.start()
            try:
                storage.filesystem("s3://bench", server.storage_options)[0].mkdir("bench")
                for rows in sizes(args.s3_rows or args.rows):
                    report["s3"].append(scale(f"s3://bench/s3-{rows}", rows, server.storage_options))
            finally:
                server.stop()
    print(f"wrote {write_results('results_scale', 'cpu', report, root=args.results_dir)}")


if __name__ == "__main__":
    main()

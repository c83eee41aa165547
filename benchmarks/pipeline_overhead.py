"""Pipeline overhead of the batch job, and the driver's memory when planning a huge manifest.

1. Images per second through `dip run` (local Ray, fits of one iteration of the CPU preset,
   so that decode, schedule and write dominate) on a local folder and on a SeaweedFS S3
   server, against a plain Python loop doing the same reads, fits and writes.
2. Peak memory of the driver planning a manifest of N rows (validation, resume check and
   plan written; no fitting).

    python -m benchmarks.pipeline_overhead [--images 200] [--rows 1000000] [--s3]

--s3 needs the test extra (the tests' SeaweedFS launcher, ``tests.conftest.make_s3_server``).
Writes ``benchmarks/results/pipeline_overhead/cpu.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from benchmarks.common import RESULTS, ROOT, write_results
from pipeline import storage
from pipeline.batch import results
from pipeline.batch.inputs import read_picture
from pipeline.core.options import Options
from pipeline.core.restore import restore


def make_images(prefix: str, count: int, size: int, storage_options: dict | None) -> str:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
        uri = storage.join(prefix, "in", f"img{i:05d}.png")
        storage.write_bytes(uri, buffer.getvalue(), storage_options)
        rows.append({"image_id": f"img{i:05d}", "uri": uri})
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    manifest = storage.join(prefix, "manifest.parquet")
    storage.write_bytes(manifest, sink.getvalue().to_pybytes(), storage_options)
    return manifest


def plain_loop(manifest: str, output: str, storage_options: dict | None) -> float:
    """The same reads, fits and writes as the batch job, in one Python loop."""
    import torch

    torch.set_num_threads(1)
    table = pq.read_table(io.BytesIO(storage.read_bytes(manifest, storage_options))).to_pylist()
    start = time.perf_counter()
    shards = results.ShardWriter(output, "plain", storage_options)
    for row in table:
        picture = read_picture(row["uri"], storage_options)
        restored = restore(picture, Options(task="denoise", preset="cpu-small", iterations=1, device="cpu"))
        from pipeline.core.encoding import encode_png

        storage.write_bytes(storage.join(output, "restored", f"{row['image_id']}.png"),
                            encode_png(restored.picture), storage_options)
        summary = restored.summary()
        shards.add({"image_id": row["image_id"], "status": "ok", "config_hash": "plain", "attempt": 1,
                    **{k: v for k, v in summary.items() if k in results.COLUMNS}})
    shards.flush()
    return time.perf_counter() - start


def dip_run(manifest: str, output: str, storage_options: dict | None) -> float:
    command = [sys.executable, "-m", "pipeline.cli.main", "run", "--manifest", manifest, "--output", output,
               "--preset", "cpu-small", "--iterations", "1", "--device", "cpu", "--quiet", "--num-cpus", "2",
               "--storage-options", json.dumps(storage_options or {})]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def plan_memory(rows: int, folder: Path) -> dict:
    """Peak RSS of a fresh process planning a manifest of ``rows`` rows."""
    manifest = folder / "big.parquet"
    ids = pa.array([f"photo-{i:08d}" for i in range(rows)])
    uris = pa.array([f"s3://archive/scans/photo-{i:08d}.tif" for i in range(rows)])
    pq.write_table(pa.table({"image_id": ids, "uri": uris, "box": pa.array([f"B{i % 977}" for i in range(rows)])}),
                   manifest, row_group_size=50_000)
    del ids, uris
    code = (  # run in the checkout's root: `python -c` imports from there
        "import time\n"
        "from pipeline.batch.job import RunConfig, write_plan\n"
        "from pipeline.core.options import Options\n"
        "t = time.perf_counter()\n"
        "_, s = write_plan(RunConfig(manifest=%r, output=%r, defaults=Options(preset='cpu-small')), 'bench')\n"
        # VmHWM, not ru_maxrss: ru_maxrss keeps the parent's peak across the exec
        "print(s.total, time.perf_counter() - t, next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))"
        ".split()[1])\n"
    ) % (str(manifest), str(folder / "out"))
    total, seconds, max_rss_kib = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                                 text=True, cwd=ROOT).stdout.split()
    return {"rows": int(total), "seconds": round(float(seconds), 1), "peak_rss_mib": round(int(max_rss_kib) / 1024, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--s3", action="store_true", help="Also on a SeaweedFS server (needs the test extra).")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    report = {"images": args.images, "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        targets = [("local", tmp + "/local", None)]
        server = None
        if args.s3:
            from tests.conftest import make_s3_server  # the tests' SeaweedFS launcher (the test extra)

            (Path(tmp) / "weed").mkdir()
            server = make_s3_server(Path(tmp) / "weed")
            server.start()
            bucket = "bench"
            storage.filesystem("s3://bench", server.storage_options)[0].mkdir(bucket)
            targets.append(("s3", f"s3://{bucket}", server.storage_options))
        try:
            for name, prefix, options in targets:
                manifest = make_images(prefix, args.images, args.size, options)
                plain = plain_loop(manifest, storage.join(prefix, "plain"), options)
                ray_seconds = dip_run(manifest, storage.join(prefix, "dip"), options)
                report[name] = {"plain_loop_images_per_s": round(args.images / plain, 2),
                                "dip_run_images_per_s": round(args.images / ray_seconds, 2),
                                "ratio": round(plain / ray_seconds, 2)}
                print(name, report[name], flush=True)
        finally:
            if server is not None:
                server.stop()
        if args.rows:
            report["plan_memory"] = plan_memory(args.rows, Path(tmp))
            print("plan", report["plan_memory"], flush=True)
    print(f"wrote {write_results('pipeline_overhead', 'cpu', report, root=args.results_dir)}")


if __name__ == "__main__":
    main()

"""Peak memory of decoding a 12-megapixel 16-bit RGB TIFF (4000x3000), against its float32 pixel array.

    python -m benchmarks.decode_memory [--width 4000 --height 3000]

For each compression (none, Deflate, LZW) the file is made with tifffile from seeded smooth
16-bit data, then decoded by ``pipeline.core.images.decode`` with tracemalloc on (numpy and
torch.from_numpy allocations are traced; the file's bytes are held before the measurement
starts, as the batch job holds them). Writes ``benchmarks/results/decode_memory/cpu.json``.
"""

import argparse
import io
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np
import tifffile

from benchmarks.common import RESULTS, write_results
from pipeline.core.images import decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    h, w = args.height, args.width
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    base = (np.sin(x / 97.0) + np.cos(y / 61.0) + 2) * 16000  # smooth, like a scan, plus grain
    array = np.stack([base, base * 0.9, base * 0.8], axis=-1) + rng.normal(0, 300, (h, w, 3))
    array = np.clip(array, 0, 65535).astype(np.uint16)
    float32_bytes = h * w * 3 * 4
    rows = []
    for compression in (None, "zlib", "lzw"):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array, photometric="rgb", compression=compression)
        data = buffer.getvalue()
        tracemalloc.start()
        started = time.perf_counter()
        picture = decode(data, name="scan.tif", max_pixels=None)
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert picture.bit_depth == 16 and picture.pixels.shape == (1, 3, h, w)
        rows.append({"compression": compression or "none", "file_mib": round(len(data) / 2**20, 1),
                     "peak_mib": round(peak / 2**20, 1), "peak_over_float32": round(peak / float32_bytes, 2),
                     "seconds": round(seconds, 2)})
        print(rows[-1], flush=True)
        del picture
    result = {"width": w, "height": h, "float32_mib": round(float32_bytes / 2**20, 1), "rows": rows,
              "python": platform.python_version(), "tifffile": tifffile.__version__}
    print(f"wrote {write_results('decode_memory', 'cpu', result, root=args.results_dir)}")


if __name__ == "__main__":
    main()

"""Benchmark (not a test): ``scan`` throughput with 1 and with N worker processes, and the parent's memory.

Writes N small synthetic JPEGs to a temporary folder, scans it once per worker count, and prints
images/s for each, the speed-up over one worker, how many distinct processes decoded images, the
parent's CPU time per image (with workers, the serial part that caps scaling) and its peak RSS
(``resource.getrusage``) before and after each scan: the scan streams, so the parent's memory must
not grow with N. Wall-clock rates mean little on a machine other jobs are loading.

    .venv/bin/python pipelines/bench_scan.py [--n 10000] [--workers 1,2] [--height 128 --width 64]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from dpal_cache.data.manifest import ScanConfig, scan
from dpal_cache.data.sources import FolderSource, _read_file


class PidFolderSource(FolderSource):
    """A folder whose ``path`` column records the process that scanned each image."""

    def path(self, index: int) -> str:
        return f"{os.getpid()}:{super().path(index)}"

    def read(self, index: int) -> bytes:
        return _read_file(os.path.join(self.root, self.key(index)))  # the real path, not the labelled one


def write_jpegs(folder: Path, n: int, height: int, width: int, seed: int = 0) -> int:
    """``n`` gradient-plus-noise JPEGs (compress like photos, decode like photos); returns bytes written."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([yy / height, xx / width, (yy + xx) / (height + width)], axis=-1) * 200
    total = 0
    for i in range(n):
        img = base + rng.normal(0, 12, base.shape).astype(np.float32) + rng.uniform(0, 55, 3).astype(np.float32)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        sub = folder / f"{i // 1000:03d}"  # 1000 files per folder, like real dumps
        sub.mkdir(exist_ok=True)
        (sub / f"{i:07d}.jpg").write_bytes(buf.getvalue())
        total += len(buf.getvalue())
    return total


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def parent_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images to generate")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--row-group-size", type=int, default=ScanConfig.row_group_size,
                        help="rows the parent buffers before writing; bounds its memory")  # fmt: skip
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_scan_") as tmp:
        folder = Path(tmp) / "imgs"
        folder.mkdir()
        start = time.perf_counter()
        written = write_jpegs(folder, args.n, args.height, args.width)
        print(f"wrote {args.n:,} JPEGs of {args.height}x{args.width} ({written / 2**20:.1f} MiB) "
              f"in {time.perf_counter() - start:.1f}s; {os.cpu_count()} CPU cores")  # fmt: skip
        source = PidFolderSource(folder)
        print(f"listed {len(source):,} images; parent peak RSS {peak_rss_mib():.0f} MiB before scanning")

        rates: dict[int, float] = {}
        for workers in (int(w) for w in args.workers.split(",")):
            before, cpu = peak_rss_mib(), parent_cpu_seconds()
            out = Path(tmp) / f"manifest_{workers}.parquet"
            cfg = ScanConfig(workers=workers, chunk_size=args.chunk_size, row_group_size=args.row_group_size)
            summary = scan(source, out, cfg)
            cpu = parent_cpu_seconds() - cpu
            pids = {p.split(":", 1)[0] for p in pq.read_table(out, columns=["path"]).column("path").to_pylist()}
            rates[workers] = summary.images_per_second
            print(f"workers={workers}: {summary.total:,} images ({summary.failed} failed) in {summary.seconds:.2f}s = "
                  f"{summary.images_per_second:,.0f} images/s; decoded in {len(pids)} process(es)"
                  f"{' (the parent)' if pids == {str(os.getpid())} else ''}; "
                  f"parent CPU {1e6 * cpu / max(summary.total, 1):.0f} us/image; "
                  f"parent peak RSS {before:.0f} -> {peak_rss_mib():.0f} MiB")  # fmt: skip
        if 1 in rates and len(rates) > 1:
            for workers, r in rates.items():
                if workers != 1:
                    print(f"speed-up workers={workers} / workers=1: {r / rates[1]:.2f}x")


if __name__ == "__main__":
    main()

"""Benchmark: `extract` throughput next to the bare teacher forward on the same batches.

Generates synthetic persons, scans them, then measures in one run:
- bare teacher: TeacherStep alone on pre-rendered batches (the ceiling of extraction);
- extract: the whole `extract()` (decode, render in DataLoader workers, teacher, encode, write);
- where the rest goes: decode+render, teacher, encode, write, each timed alone on the same data.
Ratios are what to read (shared machines are noisy); absolute numbers only on a quiet machine.

    .venv/bin/python pipelines/bench_extract.py --images 64 --teacher random:vit_base --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--teacher", default="random:vit_base")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=-1, help="extract DataLoader workers (-1: cores - 1)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp16", choices=["fp16", "int8"])
    parser.add_argument("--map-precision", default="fp16", choices=["fp16", "log8"])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
    from dpal_cache.data.sources import open_source
    from dpal_cache.extract.compute import BlockBuffer
    from dpal_cache.extract.config import ExtractConfig
    from dpal_cache.extract.items import block_batches, collate
    from dpal_cache.extract.run import ExtractSession, extract
    from dpal_cache.store import io as store_io
    from dpal_cache.synth import SynthConfig, synthesize

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ids = max(2, args.images // 4)
        synthesize(tmp / "synth", SynthConfig(ids=ids, images_per_id=4, train_fraction=1.0, masks=False))
        folder = tmp / "synth" / "bounding_box_train"
        scan(open_source(folder), tmp / "m.parquet", ScanConfig())
        source, manifest = open_source(folder), read_manifest(tmp / "m.parquet")
        cfg = ExtractConfig(teacher=args.teacher, batch_size=args.batch_size, workers=args.workers,
                            device=args.device, shard_images=max(args.batch_size, 32), calibration_images=16,
                            token_precision=args.precision, map_precision=args.map_precision)
        session = ExtractSession(cfg, source, manifest)
        layout = session.layout
        blocks = list(range(layout.n_shards))
        batches = [b for b in block_batches(layout, blocks, cfg.batch_size)]
        images = sum(len(b) for b in batches)

        t0 = time.perf_counter()
        rendered = [collate([session.dataset[i] for i in batch]) for batch in batches]
        t_render = time.perf_counter() - t0

        session.step(rendered[0])  # warm-up
        t0 = time.perf_counter()
        outs = [session.step(b) for b in rendered]
        t_teacher = time.perf_counter() - t0

        calib = session.calibrate(workers=0)
        t0 = time.perf_counter()
        buffers = {}
        for batch, out in zip(rendered, outs):
            block = int(batch["index"][0]) // layout.shard_images
            buffers.setdefault(block, BlockBuffer(layout, block)).add(batch, out, calib)
        t_encode = time.perf_counter() - t0

        group = store_io.create_store(str(tmp / "w.zarr"), layout, session.attrs)
        t0 = time.perf_counter()
        for block, buf in buffers.items():
            store_io.write_block(group, layout, block, buf.arrays)
        t_write = time.perf_counter() - t0

        t0 = time.perf_counter()
        extract(cfg, source, manifest, str(tmp / "feats.zarr"), teacher=session.teacher)
        t_extract = time.perf_counter() - t0

    result = {
        "images": images,
        "teacher": args.teacher,
        "device": str(session.device),
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "bare_teacher_images_per_s": images / t_teacher,
        "extract_images_per_s": images / t_extract,
        "ratio_extract_over_teacher": t_teacher / t_extract,
        "seconds": {"decode_render": t_render, "teacher": t_teacher, "encode": t_encode, "write": t_write,
                    "extract_total (incl. calibration, store creation)": t_extract},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

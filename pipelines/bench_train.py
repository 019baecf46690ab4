"""Benchmark: training steps/s from the cache vs online (teacher in the loop) vs in-memory targets.

One run, same student, teacher, batch and images:
- cached: `dpal-cache train` from a feature store (rendering in DataLoader workers);
- online: the teacher computes the targets inside the loop (what the cache saves);
- ceiling: the student + decoder step alone on batches already in memory (no I/O, no teacher).
Prints steps/s of each, the ratios cached/online and cached/ceiling, and the data-wait fraction
of the cached run. Ratios are what to read on a shared machine.

    .venv/bin/python pipelines/bench_train.py --teacher random:vit_base --batch-size 16 --steps 12
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


class StepClock:
    """Progress callback that timestamps optimizer steps (the first `skip` steps are warm-up)."""

    def __init__(self, skip: int):
        self.skip = skip
        self.times: list[float] = []
        self.records: list[dict] = []

    def __call__(self, record: dict) -> None:
        self.times.append(time.perf_counter())
        self.records.append(record)

    def steps_per_s(self) -> float:
        t = self.times[self.skip :]
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--teacher", default="random:vit_base")
    parser.add_argument("--student", default="vit_tiny_patch16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from dpal_cache.data.manifest import ScanConfig, read_manifest, scan
    from dpal_cache.data.sources import open_source
    from dpal_cache.extract.config import ExtractConfig
    from dpal_cache.extract.run import extract, resolve_device
    from dpal_cache.synth import SynthConfig, synthesize
    from dpal_cache.train.config import TrainConfig
    from dpal_cache.train.data import EpochSampler, StoreDataset, make_loader
    from dpal_cache.train.loop import build_model, param_groups, train
    from dpal_cache.train.online import train_online
    from dpal_cache.train.students import StudentConfig

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "synth", SynthConfig(ids=max(2, args.images // 4), images_per_id=4, train_fraction=1.0,
                                               masks=False))
        folder = tmp / "synth" / "bounding_box_train"
        scan(open_source(folder), tmp / "m.parquet", ScanConfig())
        source, manifest = open_source(folder), read_manifest(tmp / "m.parquet")
        ecfg = ExtractConfig(teacher=args.teacher, batch_size=args.batch_size, device=args.device, workers=0,
                             shard_images=64, calibration_images=32)
        extract(ecfg, source, manifest, str(tmp / "feats.zarr"))
        steps = args.steps + args.warmup_steps
        epochs = -(-steps * args.batch_size // len(source)) + 1
        cfg = TrainConfig(student=StudentConfig(name=args.student), batch_size=args.batch_size, epochs=epochs,
                          max_steps=steps, workers=args.workers, device=args.device, log_every=1,
                          checkpoint_every=10**9)

        cached = StepClock(args.warmup_steps)
        train(cfg, str(tmp / "feats.zarr"), source, tmp / "run_cached", progress=cached)
        online = StepClock(args.warmup_steps)
        train_online(cfg, ecfg, source, manifest, tmp / "run_online", progress=online)

        # ceiling: the same model step on batches already in memory
        dataset = StoreDataset(str(tmp / "feats.zarr"), source)
        loader = make_loader(dataset, EpochSampler(len(dataset), args.batch_size, end_epoch=1), workers=0)
        batches = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
                   for b, _ in zip(loader, range(4))]
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, dataset).to(device)
        opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
        times = []
        for i in range(steps):
            with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
                out = model(batches[i % len(batches)], 0)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter())
        t = times[args.warmup_steps :]
        ceiling = (len(t) - 1) / (t[-1] - t[0])

    waits = [r["data_wait"] for r in cached.records[args.warmup_steps :] if "data_wait" in r]
    result = {
        "teacher": args.teacher,
        "student": args.student,
        "batch_size": args.batch_size,
        "device": str(device),
        "timed_steps": args.steps,
        "steps_per_s": {"cached": cached.steps_per_s(), "online": online.steps_per_s(), "ceiling": ceiling},
        "ratio_cached_over_online": cached.steps_per_s() / online.steps_per_s(),
        "ratio_cached_over_ceiling": cached.steps_per_s() / ceiling,
        "data_wait_fraction_cached": sum(waits) / len(waits) if waits else None,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

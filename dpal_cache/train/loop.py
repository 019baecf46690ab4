"""``train``: the student + decoder from a feature store, without the teacher; resumable; DDP-ready.

One process per GPU (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is a
single process). Rank 0 writes ``RUN_DIR/config.yaml``, ``model.json`` (parameter counts),
``metrics.jsonl`` (one line per logged optimizer step: every loss component, lr, samples/s,
data-wait fraction) and atomic
checkpoints ``last.pt`` that carry the resolved config. ``resume=True`` continues from
``last.pt`` exactly: weights, optimizer, EMA, RNG state and the position in the data. A resumed
run must have the same config except the runtime fields (``RUNTIME_FIELDS``: how far, where and
how it runs, never what it computes). ``cfg.tensorboard`` also writes the metric lines as
TensorBoard scalars into ``RUN_DIR/tb``.

    summary = train(cfg, "feats.zarr", open_source("imgs/"), Path("runs/vit_tiny"))
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from dpal_cache.config import dump_yaml, to_dict
from dpal_cache.data.sources import ImageSource
from dpal_cache.devices import resolve_device
from dpal_cache.store.codecs import decode_targets
from dpal_cache.train.checkpoint import save_checkpoint
from dpal_cache.train.config import TrainConfig
from dpal_cache.train.data import StoreDataset, make_loader
from dpal_cache.train.decoders import build_decoder
from dpal_cache.train.ema import EMA
from dpal_cache.train.errors import StoreMismatch
from dpal_cache.train.inputs import DeviceRender
from dpal_cache.train.losses import LOSS_KEYS
from dpal_cache.train.model import DistillModel
from dpal_cache.train.resume import (
    RUNTIME_FIELDS,
    Position,
    check_resume_store,
    check_resume_student,
    load_resume_state,
    restore,
    truncate_metrics,
)
from dpal_cache.train.rundir import check_run_dir
from dpal_cache.train.sampler import EpochSampler
from dpal_cache.train.schedule import ema_decay_at, lr_at, scaled_lr
from dpal_cache.train.students import StudentConfig, build_student

log = logging.getLogger(__name__)

__all__ = ["RUNTIME_FIELDS", "TrainSummary", "run_training", "train"]
Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainSummary:
    run_dir: Path
    steps: int = 0  # optimizer steps run by this call (a resume counts only its own)
    step: int = 0  # the run's step at the end (where a resume continues from)
    total_steps: int = 0  # the steps the schedule spans (--epochs)
    epochs_done: float = 0.0
    seconds: float = 0.0
    parameters: dict[str, int] = field(default_factory=dict)  # student and decoder parameter counts
    first: dict[str, float] = field(default_factory=dict)  # losses of the first logged step of this run
    last: dict[str, float] = field(default_factory=dict)


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistEnv:
    """Join the torchrun process group when launched by torchrun; else a single process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return env


def rank_device(cfg: TrainConfig, env: DistEnv) -> torch.device:
    """The device this process trains on: ``cfg.device``, a torchrun rank's own GPU under DDP."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and env.world > 1:
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    return device


# learned tokens and position tables (by the last part of a parameter's name): no weight decay, as norms and biases
NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "dist_token", "token", "query", "queries")


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on 1-D parameters (norms, biases) and learned tokens / position tables (the student's class
    token, D-PaDe's router token ``router.token`` and pattern queries)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def tensorboard_writer_class() -> type:
    """``SummaryWriter``, or an ImportError that says what to install (raised before any training)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("tensorboard=true needs the tensorboard package: pip install tensorboard "
                          "(or train with tensorboard=false; metrics.jsonl has the same numbers)") from None
    return SummaryWriter


def build_model(cfg: TrainConfig, dataset: StoreDataset) -> DistillModel:
    """Student at the store's view size, decoder from the student's to the teacher's width."""
    layout = dataset.layout
    student_cfg = StudentConfig(**{**cfg.student.__dict__, "img_size": tuple(dataset.views.global_view.size)})
    student = build_student(student_cfg)
    teacher_dim = layout.dim
    decoder = build_decoder(cfg.decoder.kind, student.embed_dim, teacher_dim, cfg.decoder)
    stats = torch.from_numpy(dataset.token_stats)
    zeroed = dataset.meta.precision.mask_at_extract is not None
    return DistillModel(student, decoder, cfg.loss, cfg.decoder, tuple(layout.view_grid), tuple(layout.crowd_grid),
                        stats, zeroed_background=zeroed)


def model_summary(model: DistillModel, cfg: TrainConfig) -> dict[str, Any]:
    """Parameter counts of the student and the decoder (written to RUN_DIR/model.json and logged at start)."""
    student, decoder = model.student, model.decoder
    return {
        "student": {"name": cfg.student.name, "timm_name": student.timm_name, "embed_dim": student.embed_dim,
                    "parameters": sum(p.numel() for p in student.parameters()),
                    "set_attributes": student.set_attributes},
        "decoder": {"kind": cfg.decoder.kind, "projected_to": cfg.decoder.projected_width(student.embed_dim),
                    "parameters": sum(p.numel() for p in decoder.parameters())},
    }


def log_model(cfg: TrainConfig, model: DistillModel, sizes: dict[str, Any], dataset) -> None:
    """The start-of-run lines: parameter counts, and the local loss's weights when the store zeroed background."""
    log.info("student %s: %.2fM parameters; decoder %s: %.2fM parameters%s", cfg.student.name,
             sizes["student"]["parameters"] / 1e6, cfg.decoder.kind, sizes["decoder"]["parameters"] / 1e6,
             f" (student tokens projected to {sizes['decoder']['projected_to']})"
             if sizes["decoder"]["projected_to"] else "")
    if model.zeroed_background:
        log.info("the store zeroed background patch tokens (mask_at_extract %g): the local loss gives them "
                 "weight 0", dataset.meta.precision.mask_at_extract)


@dataclass(frozen=True)
class Schedule:
    """The run's length and learning-rate schedule, from the data, the batch and the process count."""

    per_epoch: int  # batches per epoch on this rank
    steps_per_epoch: int  # optimizer steps per epoch
    total_steps: int  # the steps the schedule spans (cfg.epochs)
    run_steps: int  # the steps this run goes to (--max-steps, at most total_steps)
    peak_lr: float
    warmup: int  # warmup steps


def plan_schedule(cfg: TrainConfig, sampler_args: dict[str, Any], world: int) -> Schedule:
    """``Schedule`` for ``cfg``; warns when the learning rate would never reach its peak."""
    per_epoch = EpochSampler(**sampler_args).batches_per_epoch()
    steps_per_epoch = max(1, per_epoch // cfg.optim.accum_steps)
    total = cfg.epochs * steps_per_epoch
    run_steps = min(total, cfg.max_steps) if cfg.max_steps is not None else total
    warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    if warmup > total:
        log.warning("the %g warmup epochs (%d steps) are longer than the %d epochs of the run (%d steps): the "
                    "learning rate never reaches its peak; lower optim.warmup_epochs", cfg.optim.warmup_epochs,
                    warmup, cfg.epochs, total)
    elif run_steps < warmup:
        log.warning("--max-steps %d ends the run inside the %d warmup steps (the schedule spans %d epochs, %d "
                    "steps): the learning rate never reaches its peak; set --epochs for a short complete run",
                    run_steps, warmup, cfg.epochs, total)
    peak = scaled_lr(cfg.optim.base_lr, cfg.batch_size * world * cfg.optim.accum_steps)
    return Schedule(per_epoch, steps_per_epoch, total, run_steps, peak, warmup)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    valid = batch["valid"]
    keep = None if bool(valid.all()) else valid
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value[keep] if keep is not None else value
            out[key] = value.to(device, non_blocking=True)
        else:
            out[key] = value
    return out


class RunLog:
    """Rank 0's metric lines: ``metrics.jsonl`` (one line per logged step) and, with ``tensorboard``, the same
    numbers as TensorBoard scalars in ``RUN_DIR/tb``. Other ranks get a log that writes nothing."""

    def __init__(self, run_dir: Path, step: int, main: bool, writer_class: type | None):
        self.metrics = open(run_dir / "metrics.jsonl", "a") if main else None
        self.writer = writer_class(log_dir=str(run_dir / "tb"), purge_step=step) if writer_class and main else None

    def write(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step":
                    self.writer.add_scalar(f"loss/{key}" if key in LOSS_KEYS else f"train/{key}", value,
                                           record["step"])

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.writer is not None:
            self.writer.close()


def train(
    cfg: TrainConfig,
    store: str,
    source: ImageSource,
    run_dir: Path,
    resume: bool = False,
    progress: Progress | None = None,
    storage_options: dict | None = None,
) -> TrainSummary:
    """Train from the store at ``store``; see the module docstring."""
    if cfg.fresh_views:
        raise StoreMismatch("fresh_views needs the teacher in the loop (online mode: --teacher instead of --store): "
                            "a store holds only the views it was extracted with")
    check_run_dir(Path(run_dir), resume)  # before the store is opened: a refused run costs nothing
    dataset = StoreDataset(store, source, relation=cfg.loss.relation, local_crop_cfg=cfg.local_crops,
                           skip_changed=cfg.skip_changed,
                           background_dir=str(cfg.background_dir) if cfg.background_dir else None,
                           storage_options=storage_options, render=render_mode(cfg))
    return run_training(cfg, dataset, run_dir, resume, progress, store_ref=store)


def render_mode(cfg: TrainConfig) -> str:
    """Where the inputs are rendered: ``device`` (the batched renderer, where the model runs) for ``render:
    device``, or ``auto`` on CUDA; ``workers`` (per sample, on the CPU) otherwise."""
    if cfg.render != "auto":
        return cfg.render
    return "device" if resolve_device(cfg.device).type == "cuda" else "workers"


def run_training(
    cfg: TrainConfig,
    dataset,
    run_dir: Path,
    resume: bool = False,
    progress: Progress | None = None,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    store_ref: str = "",
    configs: dict[str, Any] | None = None,
) -> TrainSummary:
    """The loop, for any dataset that serves StoreDataset's batches (``views``, ``layout``,
    ``token_stats``, ``token_scales``, ``meta``, ``seed``, ``groups``, ``render``); ``prepare`` completes a batch on the
    device (online mode computes the teacher targets there). ``progress`` gets each step's record plus
    ``total_steps``; ``configs`` (file name -> config dataclass) are saved into the run's folder next to its own.
    Callers check the folder first (``check_run_dir``)."""
    writer_class = tensorboard_writer_class() if cfg.tensorboard else None  # every rank: fail before joining
    env = init_distributed(cfg.device)
    device = rank_device(cfg, env)
    run_dir = Path(run_dir)
    state = load_resume_state(cfg, run_dir, env.world) if resume else None
    if state is not None:
        check_resume_store(state, dataset.meta.teacher_dim)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = build_model(cfg, dataset).to(device)
    if state is not None:
        check_resume_student(state, model.student, run_dir)
    sizes = model_summary(model, cfg)
    if env.main:
        log_model(cfg, model, sizes, dataset)
    sampler_args = dict(groups=dataset.groups, batch_size=cfg.batch_size, end_epoch=cfg.epochs, seed=cfg.seed,
                        window=cfg.shuffle_window, rank=env.rank, world=env.world)
    schedule = plan_schedule(cfg, sampler_args, env.world)
    loop = TrainLoop(cfg, model, env, device, schedule, dataset, run_dir, store_ref)
    if state is not None:
        loop.at = restore(state, model, loop.optimizer, loop.ema, device, run_dir / "last.pt")
        log.info("resumed %s at step %d (epoch %d, batch %d)", run_dir, loop.at.step, loop.at.epoch,
                 loop.at.batch_in_epoch)
    if env.main:  # every check passed: only now does the run's folder appear
        write_run_files(run_dir, cfg, sizes, configs or {}, loop.at.step)
    if dataset.render == "device":  # the workers gathered sources and parameters: render here first
        prepare = DeviceRender(dataset.views, dataset.local_crop_cfg, device, then=prepare)
        log.info("rendering inputs on %s (batched)", device)
    sampler = EpochSampler(**sampler_args, start_epoch=loop.at.epoch, start_batch=loop.at.batch_in_epoch)
    loader = make_loader(dataset, sampler, cfg.workers, pin_memory=device.type == "cuda")
    summary = loop.run(loader, prepare, RunLog(run_dir, loop.at.step, env.main, writer_class), progress)
    summary.parameters = {part: sizes[part]["parameters"] for part in ("student", "decoder")}
    log.info("trained %d steps (to step %d) in %.1fs; last loss %.4f", summary.steps, summary.step, summary.seconds,
             summary.last.get("loss", float("nan")))
    return summary


def write_run_files(run_dir: Path, cfg: TrainConfig, sizes: dict[str, Any], configs: dict[str, Any],
                    step: int) -> None:
    """Create the run's folder with ``config.yaml``, ``model.json`` and ``configs``; drop metric lines after
    ``step`` (a resume logs them again; a new run those of one that died before any checkpoint)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, run_dir / "config.yaml")
    (run_dir / "model.json").write_text(json.dumps(sizes, indent=2) + "\n")
    for name, other in configs.items():
        dump_yaml(other, run_dir / name)
    truncate_metrics(run_dir / "metrics.jsonl", step)


class TrainLoop:
    """The optimizer, EMA and DDP wrapper of one run, and its steps: ``run`` feeds it batches, accumulates
    ``accum_steps`` micro-batches per optimizer step, logs and checkpoints; ``at`` is where the run stands."""

    def __init__(self, cfg: TrainConfig, model: DistillModel, env: DistEnv, device: torch.device,
                 schedule: Schedule, dataset, run_dir: Path, store_ref: str):
        self.cfg, self.model, self.env, self.device, self.schedule = cfg, model, env, device, schedule
        self.dataset, self.run_dir, self.store_ref = dataset, run_dir, store_ref
        self.ema = EMA(model.student, cfg.ema_decay) if cfg.ema_decay else None
        # every parameter gets a gradient each step (every decoder kind and loss weight, checked in
        # tests/train/test_ddp.py), so DDP need not search the graph for unused ones
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=False) if env.world > 1 else None
        self.forward = ddp if ddp is not None else model
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=schedule.peak_lr,
                                           betas=cfg.optim.betas)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and device.type == "cuda"
                         else contextlib.nullcontext())
        self.token_scales = torch.as_tensor(dataset.token_scales, device=device)
        self.at = Position()

    def run(self, loader, prepare, run_log: RunLog, progress: Progress | None) -> TrainSummary:
        """Train until the schedule's ``run_steps``; returns this call's summary (parameters left to the caller)."""
        at = self.at
        summary = TrainSummary(run_dir=self.run_dir)
        start, start_step = time.perf_counter(), at.step
        self.wait = self.compute = 0.0
        self.samples = self.micro = 0
        self.accum = {k: 0.0 for k in LOSS_KEYS}
        t_fetch = time.perf_counter()
        try:
            for batch in loader:
                if at.step >= self.schedule.run_steps:
                    break
                t_got = time.perf_counter()
                self.wait += t_got - t_fetch
                stepped = self.micro_step(batch, prepare)
                t_fetch = time.perf_counter()
                self.compute += t_fetch - t_got
                if stepped:
                    self.after_step(summary, run_log, progress)
        finally:
            run_log.close()
        summary.steps, summary.step, summary.total_steps = at.step - start_step, at.step, self.schedule.total_steps
        summary.epochs_done = at.epoch + at.batch_in_epoch / self.schedule.per_epoch
        summary.seconds = time.perf_counter() - start
        return summary

    def micro_step(self, batch: dict[str, Any], prepare) -> bool:
        """Forward and backward of one batch; an optimizer step when ``accum_steps`` batches are in (True)."""
        cfg, at = self.cfg, self.at
        batch_epoch = int(batch["epoch"][0])
        batch = _to_device(batch, self.device)
        if prepare is not None:
            batch = prepare(batch)
        batch = decode_targets(batch, self.token_scales)  # stored rows -> float32 targets, on the device
        self.lr = lr_at(at.step, self.schedule.total_steps, self.schedule.warmup, self.schedule.peak_lr,
                        cfg.optim.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        with self.autocast:
            out = self.forward(batch, batch_epoch)
        (out["loss"] / cfg.optim.accum_steps).backward()
        for k in LOSS_KEYS:
            self.accum[k] += float(out[k].detach()) / cfg.optim.accum_steps
        self.samples += int(batch["global_view"].shape[0])
        self.micro += 1
        if batch_epoch != at.epoch:
            at.epoch, at.batch_in_epoch = batch_epoch, 0
        at.batch_in_epoch += 1  # (epoch, batch_in_epoch) is where the data resumes
        if self.micro % cfg.optim.accum_steps:
            return False
        if not all(math.isfinite(v) for v in self.accum.values()):
            raise FloatingPointError(f"non-finite loss at step {at.step}: {self.accum}; lower the lr or check the "
                                     "store")
        if cfg.optim.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model.student, ema_decay_at(at.step, self.schedule.total_steps, cfg.ema_decay,
                                                             cfg.ema_schedule))
        at.step += 1
        return True

    def after_step(self, summary: TrainSummary, run_log: RunLog, progress: Progress | None) -> None:
        """The step's record: into the summary, the metric log every ``log_every`` steps, ``progress``; and the
        checkpoint every ``checkpoint_every`` steps and at the end."""
        cfg, at, run_steps = self.cfg, self.at, self.schedule.run_steps
        record = {"step": at.step, "epoch": round(at.epoch + at.batch_in_epoch / self.schedule.per_epoch, 4),
                  "lr": self.lr, **{k: round(v, 6) for k, v in self.accum.items()}}
        if not summary.first:
            summary.first = dict(record)
        summary.last = dict(record)
        if at.step % cfg.log_every == 0 or at.step == run_steps:
            elapsed = max(self.wait + self.compute, 1e-9)
            record.update(samples_per_s=round(self.samples * self.env.world / elapsed, 2),
                          data_wait=round(self.wait / elapsed, 4))
            run_log.write(record)
            self.wait = self.compute = 0.0
            self.samples = 0
        if progress is not None and self.env.main:
            progress({**record, "total_steps": run_steps})
        self.accum = {k: 0.0 for k in LOSS_KEYS}
        if at.step % cfg.checkpoint_every == 0 or at.step == run_steps:
            self.checkpoint()

    def checkpoint(self) -> None:
        """``last.pt`` (rank 0): weights, optimizer, EMA, position, random state, student and store identity."""
        if not self.env.main:
            return
        model, at, device = self.model, self.at, self.device
        save_checkpoint(self.run_dir / "last.pt", {
            "config": to_dict(self.cfg),
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": at.step,
            "epoch": at.epoch,
            "batch_in_epoch": at.batch_in_epoch,
            "world": self.env.world,  # the data order and the schedule follow the process count
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "student": {"timm_name": model.student.timm_name, "timm_kwargs": model.student.timm_kwargs,
                        "set_attributes": model.student.set_attributes},
            "store": {"url": self.store_ref, "teacher": self.dataset.meta.teacher, "views_seed": self.dataset.seed},
        })

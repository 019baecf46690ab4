"""``train``: the student + decoder from a feature store, without the teacher; resumable; DDP-ready.

One process per GPU (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is a
single process). Rank 0 writes ``RUN_DIR/config.yaml``, ``metrics.jsonl`` (one line per logged
optimizer step: every loss component, lr, samples/s, data-wait fraction) and atomic
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

from dpal_cache.config import differences, dump_yaml, to_dict
from dpal_cache.data.sources import ImageSource
from dpal_cache.devices import resolve_device
from dpal_cache.store.codecs import decode_targets
from dpal_cache.train.checkpoint import load_checkpoint, load_weights, save_checkpoint
from dpal_cache.train.config import TrainConfig
from dpal_cache.train.data import StoreDataset, make_loader
from dpal_cache.train.decoders import build_decoder
from dpal_cache.train.ema import EMA
from dpal_cache.train.errors import StoreMismatch
from dpal_cache.train.inputs import DeviceRender
from dpal_cache.train.losses import LOSS_KEYS
from dpal_cache.train.model import DistillModel
from dpal_cache.train.rundir import check_run_dir
from dpal_cache.train.sampler import EpochSampler
from dpal_cache.train.schedule import ema_decay_at, lr_at, scaled_lr
from dpal_cache.train.students import StudentConfig, build_student

log = logging.getLogger(__name__)

# may differ between a run and its resume: they decide how far, where and how the run goes, not its values
RUNTIME_FIELDS = ("max_steps", "workers", "device", "render", "log_every", "checkpoint_every", "tensorboard",
                  "background_dir", "skip_changed")
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


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: run has A, now B`` for every differing leaf of two config dicts, runtime fields left out."""
    return differences(old, new, skip=RUNTIME_FIELDS, labels=("run has", "now"))


def tensorboard_writer_class() -> type:
    """``SummaryWriter``, or an ImportError that says what to install (raised before any training)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("tensorboard=true needs the tensorboard package: pip install tensorboard "
                          "(or train with tensorboard=false; metrics.jsonl has the same numbers)") from None
    return SummaryWriter


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines of ``metrics.jsonl`` after optimizer step ``step`` (and a torn last line): a
    run killed after its last checkpoint logged steps that the resume will run and log again."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def check_resume_world(state: dict[str, Any], world: int, cfg: TrainConfig, run_dir: Path) -> None:
    """A run resumes only with the process count it trained with: each rank's share of an epoch, the
    global batch and with them the epoch and the learning rate at a step all follow it."""
    saved = state.get("world")
    if saved is None or saved == world:  # checkpoints before the count was recorded: nothing to compare
        return
    launch = (f"under torchrun --nproc_per_node {saved} (pipelines/train_ddp.sh)" if saved > 1
              else "as a single process (no torchrun)")
    raise StoreMismatch(
        f"{run_dir} trained with {saved} process(es) (global batch {saved * cfg.batch_size * cfg.optim.accum_steps}) "
        f"but this resume runs {world}: the data order, epoch and learning rate at a step follow the process "
        f"count. Resume {launch}, or start a new run (--out)"
    )


def check_resume_store(state: dict[str, Any], dataset: StoreDataset) -> None:
    """A run resumes only on a store with the same teacher width (the decoder's output)."""
    old, new = state["store"]["teacher"].get("embed_dim"), dataset.meta.teacher_dim
    if old != new:
        raise StoreMismatch(
            f"the run's decoder emits {old}-dim tokens but this store's teacher has {new} dims: "
            "resume on the store the run started with, or start a new run"
        )


def check_resume_student(state: dict[str, Any], student, run_dir: Path) -> None:
    """A run resumes only with the backbone it trained: the same weight shapes can hold another architecture (an
    older dpal-cache built ``vit_tiny_patch16`` with timm's 3 heads, the paper's has 6)."""
    saved = state.get("student", {})
    was = (saved.get("timm_name"), json.loads(json.dumps(saved.get("timm_kwargs", {}))),
           dict(saved.get("set_attributes") or {}))
    now = (student.timm_name, json.loads(json.dumps(student.timm_kwargs)), student.set_attributes)
    if was != now:
        raise StoreMismatch(
            f"{run_dir} trained the student {was[0]} {was[1]} {was[2] or ''}, but this dpal-cache builds {now[0]} "
            f"{now[1]} {now[2] or ''} from the same config: the weights would load into another architecture. "
            "Export or evaluate the run as it is, and start a new run (--out) to train on"
        )


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
    device (online mode
    computes the teacher targets there). ``progress`` gets each step's record plus ``total_steps``;
    ``configs`` (file name -> config dataclass) are saved into the run's folder next to its own. Callers check the
    folder first (``check_run_dir``)."""
    writer_class = tensorboard_writer_class() if cfg.tensorboard else None  # every rank: fail before joining
    env = init_distributed(cfg.device)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and env.world > 1:
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    run_dir = Path(run_dir)
    last_path = run_dir / "last.pt"
    state = load_checkpoint(last_path) if resume else None
    diffs = config_differences(state["config"], to_dict(cfg)) if state is not None else []
    if diffs:
        raise StoreMismatch(f"--resume with a different config than the run's ({run_dir}/config.yaml):\n  "
                            + "\n  ".join(diffs) + "\nresume with the run's config, or start a new run (--out)")

    if state is not None:
        check_resume_world(state, env.world, cfg, run_dir)
        check_resume_store(state, dataset)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = build_model(cfg, dataset).to(device)
    if state is not None:
        check_resume_student(state, model.student, run_dir)
    sizes = model_summary(model, cfg)
    if env.main:
        log.info("student %s: %.2fM parameters; decoder %s: %.2fM parameters%s", cfg.student.name,
                 sizes["student"]["parameters"] / 1e6, cfg.decoder.kind, sizes["decoder"]["parameters"] / 1e6,
                 f" (student tokens projected to {sizes['decoder']['projected_to']})"
                 if sizes["decoder"]["projected_to"] else "")
        if model.zeroed_background:
            log.info("the store zeroed background patch tokens (mask_at_extract %g): the local loss gives them "
                     "weight 0", dataset.meta.precision.mask_at_extract)
    ema = EMA(model.student, cfg.ema_decay) if cfg.ema_decay else None
    # every parameter gets a gradient each step (every decoder kind and loss weight, checked in
    # tests/train/test_ddp.py), so DDP need not search the graph for unused ones
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  find_unused_parameters=False) if env.world > 1 else None
    sampler_args = dict(groups=dataset.groups, batch_size=cfg.batch_size, end_epoch=cfg.epochs, seed=cfg.seed,
                        window=cfg.shuffle_window, rank=env.rank, world=env.world)
    per_epoch = EpochSampler(**sampler_args).batches_per_epoch()
    steps_per_epoch = max(1, per_epoch // cfg.optim.accum_steps)
    total_steps = cfg.epochs * steps_per_epoch
    total_steps_run = min(total_steps, cfg.max_steps) if cfg.max_steps is not None else total_steps
    peak = scaled_lr(cfg.optim.base_lr, cfg.batch_size * env.world * cfg.optim.accum_steps)
    warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    if warmup > total_steps:
        log.warning("the %g warmup epochs (%d steps) are longer than the %d epochs of the run (%d steps): the "
                    "learning rate never reaches its peak; lower optim.warmup_epochs", cfg.optim.warmup_epochs,
                    warmup, cfg.epochs, total_steps)
    elif total_steps_run < warmup:
        log.warning("--max-steps %d ends the run inside the %d warmup steps (the schedule spans %d epochs, %d "
                    "steps): the learning rate never reaches its peak; set --epochs for a short complete run",
                    total_steps_run, warmup, cfg.epochs, total_steps)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=peak, betas=cfg.optim.betas)

    step, epoch, batch_in_epoch = 0, 0, 0
    if state is not None:
        load_weights(model, state["model"], last_path)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:  # parameter groups of another dpal-cache version
            raise StoreMismatch(f"{last_path}: its optimizer state does not fit this dpal-cache's parameter groups "
                                f"({exc}); start a new run (--out)") from None
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        log.info("resumed %s at step %d (epoch %d, batch %d)", run_dir, step, epoch, batch_in_epoch)
    if env.main:  # every check passed: only now does the run's folder appear
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run_dir / "config.yaml")
        (run_dir / "model.json").write_text(json.dumps(sizes, indent=2) + "\n")
        for name, other in (configs or {}).items():
            dump_yaml(other, run_dir / name)
        # a resume drops the lines logged after its checkpoint; a new run those of one that died before any
        truncate_metrics(run_dir / "metrics.jsonl", step)

    if dataset.render == "device":  # the workers gathered sources and parameters: render here first
        prepare = DeviceRender(dataset.views, dataset.local_crop_cfg, device, then=prepare)
        log.info("rendering inputs on %s (batched)", device)
    sampler = EpochSampler(**sampler_args, start_epoch=epoch, start_batch=batch_in_epoch)
    token_scales = torch.as_tensor(dataset.token_scales, device=device)
    loader = make_loader(dataset, sampler, cfg.workers, pin_memory=device.type == "cuda")
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and device.type == "cuda"
                else contextlib.nullcontext())
    forward = ddp if ddp is not None else model
    metrics = open(run_dir / "metrics.jsonl", "a") if env.main else None
    writer = writer_class(log_dir=str(run_dir / "tb"), purge_step=step) if writer_class and env.main else None
    summary = TrainSummary(run_dir=run_dir)
    start, start_step = time.perf_counter(), step
    wait = compute = 0.0
    samples = 0
    accum = {k: 0.0 for k in LOSS_KEYS}
    micro = 0
    t_fetch = time.perf_counter()

    def checkpoint() -> None:
        if not env.main:
            return
        save_checkpoint(last_path, {
            "config": to_dict(cfg),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "world": env.world,  # the data order and the schedule follow the process count
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "student": {"timm_name": model.student.timm_name, "timm_kwargs": model.student.timm_kwargs,
                        "set_attributes": model.student.set_attributes},
            "store": {"url": store_ref, "teacher": dataset.meta.teacher, "views_seed": dataset.seed},
        })

    try:
        for batch in loader:
            if step >= total_steps_run:
                break
            t_got = time.perf_counter()
            wait += t_got - t_fetch
            batch_epoch = int(batch["epoch"][0])
            batch = _to_device(batch, device)
            if prepare is not None:
                batch = prepare(batch)
            batch = decode_targets(batch, token_scales)  # stored rows -> float32 targets, on the device
            lr = lr_at(step, total_steps, warmup, peak, cfg.optim.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                out = forward(batch, batch_epoch)
            (out["loss"] / cfg.optim.accum_steps).backward()
            for k in LOSS_KEYS:
                accum[k] += float(out[k].detach()) / cfg.optim.accum_steps
            samples += int(batch["global_view"].shape[0])
            micro += 1
            if batch_epoch != epoch:
                epoch, batch_in_epoch = batch_epoch, 0
            batch_in_epoch += 1  # (epoch, batch_in_epoch) is where the data resumes
            if micro % cfg.optim.accum_steps:
                t_fetch = time.perf_counter()
                compute += t_fetch - t_got
                continue
            if not all(math.isfinite(v) for v in accum.values()):
                raise FloatingPointError(f"non-finite loss at step {step}: {accum}; lower the lr or check the store")
            if cfg.optim.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model.student, ema_decay_at(step, total_steps, cfg.ema_decay, cfg.ema_schedule))
            step += 1
            t_fetch = time.perf_counter()
            compute += t_fetch - t_got
            record = {"step": step, "epoch": round(epoch + batch_in_epoch / per_epoch, 4), "lr": lr,
                      **{k: round(v, 6) for k, v in accum.items()}}
            if not summary.first:
                summary.first = dict(record)
            summary.last = dict(record)
            if step % cfg.log_every == 0 or step == total_steps_run:
                elapsed = wait + compute
                record.update(samples_per_s=round(samples * env.world / max(elapsed, 1e-9), 2),
                              data_wait=round(wait / max(elapsed, 1e-9), 4))
                if metrics is not None:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                if writer is not None:
                    for key, value in record.items():
                        if key != "step":
                            writer.add_scalar(f"loss/{key}" if key in LOSS_KEYS else f"train/{key}", value, step)
                wait = compute = 0.0
                samples = 0
            if progress is not None and env.main:
                progress({**record, "total_steps": total_steps_run})
            accum = {k: 0.0 for k in LOSS_KEYS}
            if step % cfg.checkpoint_every == 0 or step == total_steps_run:
                checkpoint()
    finally:
        if metrics is not None:
            metrics.close()
        if writer is not None:
            writer.close()
    summary.steps, summary.step, summary.total_steps = step - start_step, step, total_steps
    summary.parameters = {part: sizes[part]["parameters"] for part in ("student", "decoder")}
    summary.epochs_done = epoch + batch_in_epoch / per_epoch
    summary.seconds = time.perf_counter() - start
    log.info("trained %d steps (to step %d) in %.1fs; last loss %.4f", summary.steps, step, summary.seconds,
             summary.last.get("loss", float("nan")))
    return summary

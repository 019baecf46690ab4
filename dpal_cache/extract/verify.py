"""``verify``: does a feature store still hold what its teacher computes from its images today?

Four checks, each a :class:`CheckResult` of a :class:`VerifyReport`:

1. ``completeness``: every block's done flag is set, no image of a done block is still PENDING,
   status codes agree with the manifest stored in the store (scan failures are SKIPPED), the
   manifest's fingerprint matches the attributes, and the calibration is there.
2. ``source``: the source bytes of a deterministic sample of ok images, and of every image
   their crowd recipes paste, still hash to the manifest's content hash (through
   :class:`~dpal_cache.data.catalog.Catalog`, the same check extraction and training use).
3. ``replay``: the sample's views are re-rendered from the STORED ``views/params`` and its crowd
   images from the STORED ``crowds/recipe`` (never redrawn from the seed), the teacher described
   by the store's attributes runs on them in float32, and the stored targets, decoded from
   their precision, are compared with the fresh outputs: tokens (max / mean abs difference,
   relative L2 over the sample and for the worst row), attention maps (mean KL per attention
   row, worst map, max abs difference) and mask scores (max abs difference). Stores made with
   ``mask_at_extract`` are compared patch for patch with the store's own keep/drop decisions;
   a decision that disagrees with the fresh mask score away from the threshold is a failure.
4. ``precision``: the error of the store's codecs alone, measured by encoding and decoding the
   fresh float32 outputs: relative L2 for tokens (fp16 / int8), KL per row for maps (fp16 /
   log8): the measured error of the store's chosen precision.

Pass/fail limits (:class:`Tolerance`, defaults per precision in ``TOKEN_LIMITS`` / ``MAP_LIMITS``)
are sized so a correct store re-computed in float32 on the machine that wrote it passes: fp16
targets then differ from the fresh outputs by half-precision rounding only; int8 tokens and
log8 maps get their codecs' documented limits (tokens relative L2 <= 2e-2, KL per row <= 2e-3).
The reference is always float32, on any device. A store extracted under bf16 autocast on CUDA
differs from it by bf16 error, more than fp16 rounding (the attributes do not record whether
autocast ran): loosen ``tokens_rel_l2`` / ``tokens_row_rel_l2`` for such a store.

    report = verify_store("feats.zarr", "/data/LUP1M", sample=64)
    report.passed, report.check("replay").details["views/tokens"]["rel_l2"]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpal_cache.config import ConfigError, from_dict
from dpal_cache.data.catalog import Catalog, ImageUnavailable
from dpal_cache.data.device_decode import decode_sources, pack_source
from dpal_cache.data.manifest import manifest_fingerprint
from dpal_cache.data.sources import open_source
from dpal_cache.extract.run import render_backend
from dpal_cache.store.calibration import mask_score
from dpal_cache.store.codecs import decode_map, decode_tokens, encode_map, encode_tokens
from dpal_cache.store.errors import StoreError
from dpal_cache.store.layout import STATUS_FAILED, STATUS_OK, STATUS_PENDING, STATUS_SKIPPED, StoreLayout
from dpal_cache.store.meta import StoreMeta
from dpal_cache.store.quant import kl_per_row, relative_l2
from dpal_cache.store.reader import StoreReader

log = logging.getLogger(__name__)

CHECKS = ("completeness", "source", "replay", "precision")

# Limits per token precision: relative L2 over the whole sample, and of the worst single view row.
# fp16: rounding alone is <= 2**-11 relative per value (~3e-4 relative L2 on ViT tokens).
# int8: per-channel scales fitted on the calibration images (quant.py), ~1e-2 relative L2.
TOKEN_LIMITS = {
    "fp16": {"tokens_rel_l2": 1e-3, "tokens_row_rel_l2": 2e-3},
    "int8": {"tokens_rel_l2": 2e-2, "tokens_row_rel_l2": 5e-2},
}
# Limits per map precision: mean KL per attention row (nats), KL of the worst stored map, max abs
# difference of a probability. log8 codes are 7.5% apart (<= 3.7% relative error per value).
MAP_LIMITS = {
    "fp16": {"maps_kl": 1e-5, "maps_row_kl": 1e-4, "maps_max_abs": 1e-3},
    "log8": {"maps_kl": 2e-3, "maps_row_kl": 5e-3, "maps_max_abs": 5e-2},
}
# Mask scores are always stored as fp16 in [0, 1] (<= 2.4e-4 rounding); the rest is recomputation.
MASK_SCORE_LIMIT = 5e-3
# Replayed by another renderer than the store's (another device kind, or the other strategy on a CPU without
# AVX2): its inputs may differ by the renderers' tolerance (at most 2 grey levels, >= 99.9 % of the values
# identical), so the replay's token and map limits are this many times wider. Set from that tolerance, not
# measured on a GPU yet; the precision check keeps its own limits.
OTHER_RENDERER_FACTOR = 4.0


class VerifyError(StoreError):
    """Verify refuses to run: the teacher or checkpoint is not the one the store was made with."""


@dataclass(frozen=True)
class Tolerance:
    """Pass/fail limits of the replay and precision checks (see ``TOKEN_LIMITS`` / ``MAP_LIMITS``)."""

    tokens_rel_l2: float  # ||stored - fresh|| / ||fresh|| over every sampled view row
    tokens_row_rel_l2: float  # the same for the worst single view row
    maps_kl: float  # mean KL(fresh || stored) per attention row, nats
    maps_row_kl: float  # mean KL per attention row of the worst stored map
    maps_max_abs: float  # largest difference of one probability
    mask_score_max_abs: float = MASK_SCORE_LIMIT

    def widened(self, factor: float) -> Tolerance:
        """The token and map limits ``factor`` times wider (the mask-score limit as it is)."""
        keep = {"mask_score_max_abs"}
        return Tolerance(**{f.name: getattr(self, f.name) * (1.0 if f.name in keep else factor)
                            for f in dataclasses.fields(self)})

    @classmethod
    def for_precision(cls, tokens: str, maps: str, **overrides: float) -> Tolerance:
        """The default limits of a store with these precisions, with some fields overridden."""
        if tokens not in TOKEN_LIMITS or maps not in MAP_LIMITS:
            raise ValueError(f"unknown precision tokens={tokens!r} maps={maps!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown tolerance key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        return cls(**{**TOKEN_LIMITS[tokens], **MAP_LIMITS[maps], **overrides})


@dataclass
class CheckResult:
    """One check: whether it passed, a line for people, its numbers, and the first problems found."""

    name: str
    passed: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    """Every check of one verify run; ``passed`` only when all of them passed."""

    url: str
    checks: list[CheckResult]
    sampled: list[int]
    tolerance: Tolerance
    teacher: str
    device: str
    seconds: float = 0.0
    render: dict[str, str] = field(default_factory=dict)  # the store's renderer and the replay's

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks: {', '.join(c.name for c in self.checks)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (``verify --json``)."""
        return {
            "url": self.url,
            "passed": self.passed,
            "teacher": self.teacher,
            "device": self.device,
            "seconds": self.seconds,
            "render": self.render,
            "sampled": self.sampled,
            "tolerance": dataclasses.asdict(self.tolerance),
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }


MAX_PROBLEMS = 20  # problems listed per check; the counts in details are complete


def _add_problem(problems: list[str], text: str) -> None:
    if len(problems) < MAX_PROBLEMS:
        problems.append(text)


# ---------------------------------------------------------------- decoding and error measures


class ErrorStats:
    """Differences between reference rows and their approximation, accumulated batch by batch.

    Rows are store rows (one view, or one crowd image). For maps (``maps=True``) each row holds
    one or more attention rows (the last axis sums to 1) and KL is measured per attention row.
    """

    def __init__(self, maps: bool):
        self.maps = maps
        self.rows = 0
        self.values = 0
        self.abs_sum = 0.0
        self.max_abs = 0.0
        self.sq_diff = 0.0
        self.sq_ref = 0.0
        self.kl_sum = 0.0
        self.kl_rows = 0
        self.worst = -1.0
        self.worst_row = -1
        self.same_codes = 0
        self.codes = 0

    def add(self, ref: np.ndarray, approx: np.ndarray, rows: np.ndarray,
            codes: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Add store rows ``rows`` (N,): ``ref`` and ``approx`` (N, ...); ``codes``: stored and re-encoded."""
        ref = np.asarray(ref, dtype=np.float64)
        diff = np.abs(np.asarray(approx, dtype=np.float64) - ref)
        self.rows += len(ref)
        self.values += diff.size
        self.abs_sum += float(diff.sum())
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.sq_diff += float((diff**2).sum())
        self.sq_ref += float((ref**2).sum())
        if self.maps:
            per_row = np.array([kl_per_row(r, a) for r, a in zip(ref, approx)])  # mean KL of each map
            attn_rows = ref[0].size // ref.shape[-1] if len(ref) else 0
            self.kl_sum += float(per_row.sum()) * attn_rows
            self.kl_rows += len(ref) * attn_rows
        else:
            per_row = np.array([relative_l2(r, a) for r, a in zip(ref, approx)])
        if len(per_row) and per_row.max() > self.worst:
            self.worst = float(per_row.max())
            self.worst_row = int(rows[int(per_row.argmax())])
        if codes is not None:
            self.same_codes += int((codes[0] == codes[1]).sum())
            self.codes += codes[0].size

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rows": self.rows,
            "max_abs": self.max_abs,
            "mean_abs": self.abs_sum / self.values if self.values else 0.0,
            "rel_l2": float(np.sqrt(self.sq_diff / max(self.sq_ref, 1e-30))),
        }
        if self.maps:
            out["kl_per_row"] = self.kl_sum / self.kl_rows if self.kl_rows else 0.0
            out["worst_row_kl"] = max(self.worst, 0.0)
        else:
            out["worst_row_rel_l2"] = max(self.worst, 0.0)
        out["worst_row"] = self.worst_row
        if self.codes:
            out["identical_codes"] = self.same_codes / self.codes  # stored == encode(fresh), value by value
        return out


def _judge(name: str, stats: dict[str, Any], tol: Tolerance, rows_per_image: int) -> list[str]:
    """Problems of one quantity's stats against the limits (empty: within them)."""
    if not stats["rows"]:
        return []
    where = ""
    if stats["worst_row"] >= 0:
        img, k = divmod(stats["worst_row"], rows_per_image)
        kind = "view" if name.startswith("views") else "crowd"
        where = f" (worst: row {stats['worst_row']} = image {img}, {kind} {k})"
    if name == "views/mask_score":
        limits = [("max_abs", tol.mask_score_max_abs)]
    elif name == "views/tokens":
        limits = [("rel_l2", tol.tokens_rel_l2), ("worst_row_rel_l2", tol.tokens_row_rel_l2)]
    else:
        limits = [("kl_per_row", tol.maps_kl), ("worst_row_kl", tol.maps_row_kl), ("max_abs", tol.maps_max_abs)]
    return [f"{name}: {key} {stats[key]:.3g} > {limit:.3g}{where}" for key, limit in limits if stats[key] > limit]


# ---------------------------------------------------------------- inputs: manifest, teacher, sample


def sample_images(status: np.ndarray, sample: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``sample`` ok images drawn without replacement by ``seed`` (all when sample <= 0)."""
    ok = np.flatnonzero(status == STATUS_OK)
    if sample <= 0 or sample >= len(ok):
        return ok.astype(np.int64)
    return np.sort(np.random.default_rng(seed).choice(ok, size=sample, replace=False)).astype(np.int64)


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def load_store_teacher(meta: StoreMeta, checkpoint: str | Path | None = None, teacher=None):
    """The teacher the store was made with, refusing any other.

    Args:
        meta: the store's metadata.
        checkpoint: weight file; default: the path the store was extracted with if it still
            exists, else the teacher's default location. Its sha256 must equal the stored one.
        teacher: an already built teacher, checked against the stored description instead.
    """
    from dpal_cache.teachers import file_sha256, get_teacher_spec, load_teacher, resolve_checkpoint

    stored = meta.teacher
    if teacher is None:
        spec = get_teacher_spec(stored["name"])
        if spec.random:
            if checkpoint is not None:
                log.warning("%s is a random teacher: --checkpoint %s is ignored", spec.name, checkpoint)
            teacher = load_teacher(spec, pos_embed=stored["pos_embed_method"], seed=stored.get("seed") or 0)
        else:
            recorded = meta.extract_config.get("checkpoint")
            if checkpoint is None and recorded and Path(recorded).expanduser().is_file():
                checkpoint = recorded
            path = resolve_checkpoint(spec, checkpoint)
            sha = file_sha256(path)
            if sha != stored.get("checkpoint_sha256"):
                raise VerifyError(
                    f"checkpoint {path} has sha256 {sha}, but the store was extracted with "
                    f"{stored.get('checkpoint_sha256')}: these are other weights; pass the original file "
                    "with --checkpoint"
                )
            teacher = load_teacher(spec, path, pos_embed=stored["pos_embed_method"])
    fresh = _json(teacher.describe())
    diffs = [f"teacher.{k}: store has {stored[k]!r}, this teacher has {fresh[k]!r}"
             for k in sorted(stored.keys() & fresh.keys()) if stored[k] != fresh[k]]
    if diffs:
        raise VerifyError("this teacher is not the one the store was extracted with:\n  " + "\n  ".join(diffs))
    return teacher


# ---------------------------------------------------------------- check 1: completeness


def check_completeness(reader: StoreReader) -> CheckResult:
    """Done flags, arrays against the layout, status codes of written blocks, agreement with the manifest and
    the metadata."""
    meta, layout, status, manifest, done = reader.meta, reader.layout, reader.status, reader.manifest, reader.done
    problems: list[str] = []
    for problem in reader.problems:
        _add_problem(problems, problem)
    missing = np.flatnonzero(~done)
    if len(missing):
        _add_problem(problems, f"{len(missing)} of {len(done)} blocks not written: {missing[:10].tolist()}"
                     f"{' ...' if len(missing) > 10 else ''} (re-run the extract command to resume)")
    in_done = np.zeros(layout.n_images, dtype=bool)
    for b in np.flatnonzero(done):
        r = layout.shard_images_range(int(b))
        in_done[r.start:r.stop] = True
    known = (STATUS_PENDING, STATUS_OK, STATUS_SKIPPED, STATUS_FAILED)
    unknown = np.flatnonzero(~np.isin(status, known))
    if len(unknown):
        _add_problem(problems, f"{len(unknown)} images have unknown status codes, e.g. image {unknown[0]}: "
                     f"{status[unknown[0]]}")
    pending = np.flatnonzero(in_done & (status == STATUS_PENDING))
    if len(pending):
        _add_problem(problems, f"{len(pending)} images of done blocks are PENDING, e.g. {pending[:10].tolist()}")
    if manifest is None:
        _add_problem(problems, "the store holds no manifest.parquet")
    else:
        if manifest.num_rows != layout.n_images:
            _add_problem(problems, f"the stored manifest has {manifest.num_rows} rows, the store "
                         f"{layout.n_images} images")
        elif manifest_fingerprint(manifest) != meta.manifest_fingerprint:
            _add_problem(problems, "the stored manifest's fingerprint differs from the store attributes")
        else:
            scan_failed = manifest.column("status").to_numpy(zero_copy_only=False) != "ok"
            wrong = np.flatnonzero(in_done & (scan_failed != (status == STATUS_SKIPPED)))
            if len(wrong):
                _add_problem(problems, f"{len(wrong)} written images disagree with the manifest on scan failure "
                             f"(SKIPPED iff failed in the scan), e.g. {wrong[:10].tolist()}")
    if meta.calibration is None:
        _add_problem(problems, "no calibration recorded (the calibration pass never finished)")
    if meta.complete and len(missing):
        _add_problem(problems, "the attributes say complete, but blocks are missing")
    if meta.images_ok is not None and not len(missing) and meta.images_ok != int((status == STATUS_OK).sum()):
        _add_problem(problems, f"attributes count {meta.images_ok} ok images, images/status "
                     f"{int((status == STATUS_OK).sum())}")
    details = {
        "blocks_done": int(done.sum()),
        "blocks_total": int(len(done)),
        "images_ok": int((status == STATUS_OK).sum()),
        "images_skipped": int((status == STATUS_SKIPPED).sum()),
        "images_failed": int((status == STATUS_FAILED).sum()),
        "images_pending": int((status == STATUS_PENDING).sum()),
        "finalized": meta.complete,
    }
    summary = f"{details['blocks_done']}/{details['blocks_total']} blocks done, {details['images_ok']} images ok, " \
              f"{details['images_skipped']} skipped, {details['images_failed']} failed"
    return CheckResult("completeness", not problems, summary, details, problems)


# ---------------------------------------------------------------- checks 2-4: source, replay, precision


@dataclass
class _Rendered:
    """The re-rendered teacher inputs of the images of one batch that could be rendered."""

    index: list[int] = field(default_factory=list)
    views: list[torch.Tensor] = field(default_factory=list)  # (V, 3, H, W) uint8 each
    crowds: list[torch.Tensor] = field(default_factory=list)  # (C, 3, Hc, Wc) uint8 each


class _Replayer:
    """Reads sources through the catalog, re-renders from stored params and recipes, and runs the teacher."""

    def __init__(self, reader: StoreReader, catalog: Catalog, teacher, device: torch.device, batched: bool = False):
        from dpal_cache.extract.compute import TeacherStep

        self.reader = reader
        self.layout = layout = reader.layout
        self.catalog = catalog
        self.step = TeacherStep(teacher, device, amp=False, gram=layout.gram)  # float32: the reference
        self.backgrounds = reader.backgrounds
        self.batched = batched  # the batched renderer on the teacher's device, else per sample on the CPU
        self.device = device
        self.checked: dict[int, str] = {}  # image -> "" (matches the manifest) or why it cannot be used
        self.anchors: set[int] = set()
        self.source_problems: list[str] = []
        self.render_problems: list[str] = []

    def _fetch(self, index: int):
        """The image as the renderer takes it: decoded pixels, or (batched) bytes or pixels for the device."""
        if not self.batched:
            return self.catalog.load(index)
        size = (int(self.catalog.sizes[index, 0]), int(self.catalog.sizes[index, 1]))
        return self.catalog.load_packed(index, lambda data: pack_source(data, self.catalog.decode, True, size),
                                        channels_first=True)

    def _load(self, index: int, loaded: dict):
        if index not in loaded:
            try:
                loaded[index] = self._fetch(index)
                self.checked[index] = ""
            except ImageUnavailable as exc:
                if index not in self.checked:
                    role = "sampled image" if index in self.anchors else "crowd partner/background"
                    _add_problem(self.source_problems, f"{role} {index} ({self.catalog.source.key(index)}): "
                                 f"{exc.reason}{': ' + exc.detail if exc.detail else ''}")
                self.checked[index] = exc.reason
                raise
        return loaded[index]

    def render(self, images: list[int]) -> _Rendered:
        """Re-render ``images`` from the store's params and recipes; images that cannot be are left out."""
        from dpal_cache.views.crowd import CrowdRecipe

        c = self.layout.crowds_per_image
        usable, loaded, backgrounds = [], {}, {}
        for i in images:
            try:
                self._load(i, loaded)
                for vec in self.reader.recipes[i * c:(i + 1) * c] if c else []:
                    recipe = CrowdRecipe.from_vector(vec)
                    for j in recipe.dataset_indices():
                        self._load(j, loaded)
                    if recipe.background_kind == "folder" and recipe.background_index not in backgrounds:
                        bg = self.backgrounds
                        backgrounds[recipe.background_index] = (
                            pack_source(bg.source.read(recipe.background_index), bg.decode, False)
                            if self.batched else bg.load(recipe.background_index))
            except ImageUnavailable:
                continue  # counted by the source check
            except (ValueError, KeyError, AttributeError) as exc:
                _add_problem(self.render_problems, f"image {i}: stored params/recipes do not render: {exc}")
                continue
            usable.append(i)
        try:
            return self._render_batched(usable, loaded, backgrounds) if self.batched else self._render_each(
                usable, loaded, backgrounds)
        except (ValueError, KeyError, AttributeError) as exc:
            _add_problem(self.render_problems, f"images {usable}: stored params/recipes do not render: {exc}")
            return _Rendered()

    def _render_each(self, images: list[int], loaded: dict, backgrounds: dict) -> _Rendered:
        from dpal_cache.views.crowd import CrowdRecipe, render_crowd
        from dpal_cache.views.render import render_view

        v, c = self.layout.views_per_image, self.layout.crowds_per_image
        out = _Rendered()
        for i in images:
            views = torch.stack([render_view(loaded[i], p) for p in self.reader.params[i * v:(i + 1) * v]])
            crowds = []
            for vec in self.reader.recipes[i * c:(i + 1) * c] if c else []:
                recipe = CrowdRecipe.from_vector(vec)
                crowds.append(render_crowd(recipe, loaded, backgrounds.get(recipe.background_index)))
            out.index.append(i)
            out.views.append(views)
            out.crowds.append(torch.stack(crowds) if crowds else torch.zeros((0, 3, 1, 1), dtype=torch.uint8))
        return out

    def _render_batched(self, images: list[int], loaded: dict, backgrounds: dict) -> _Rendered:
        from dpal_cache.views.batched import BatchRenderer

        out = _Rendered()
        if not images:
            return out
        v, c = self.layout.views_per_image, self.layout.crowds_per_image
        decoded = dict(zip(loaded, decode_sources(list(loaded.values()), self.device)))
        bgs = dict(zip(backgrounds, decode_sources(list(backgrounds.values()), self.device)))
        renderer = BatchRenderer(self.device)
        views = renderer.views([decoded[i] for i in images for _ in range(v)],
                               [p for i in images for p in self.reader.params[i * v:(i + 1) * v]])
        crowds = renderer.crowds([r for i in images for r in self.reader.recipes[i * c:(i + 1) * c]], decoded,
                                 bgs) if c else None
        for k, i in enumerate(images):
            out.index.append(i)
            out.views.append(views[k * v:(k + 1) * v])
            out.crowds.append(crowds[k * c:(k + 1) * c] if c else torch.zeros((0, 3, 1, 1), dtype=torch.uint8))
        return out

    def run(self, rendered: _Rendered) -> dict[str, np.ndarray]:
        batch = {
            "status": np.full(len(rendered.index), STATUS_OK, dtype=np.uint8),
            "views": torch.stack(rendered.views),  # (B, V, 3, H, W)
            "crowds": torch.stack(rendered.crowds),  # (B, C, 3, Hc, Wc)
        }
        return self.step(batch)


def _rows(images: list[int], per_image: int) -> np.ndarray:
    return (np.asarray(images, dtype=np.int64)[:, None] * per_image + np.arange(per_image)).reshape(-1)


def _batches(images: np.ndarray, size: int) -> Iterator[list[int]]:
    for start in range(0, len(images), size):
        yield images[start:start + size].tolist()


def _replay(reader: StoreReader, replayer: _Replayer, chosen: np.ndarray,
            batch_size: int, tol: Tolerance) -> tuple[dict[str, ErrorStats], dict[str, ErrorStats], int, dict | None]:
    """Replay ``chosen``.

    Returns:
        (stored vs fresh, codec round trip vs fresh) stats per array, images replayed, and for stores
        with ``mask_at_extract`` the patches whose stored keep/drop decision differs from the fresh score's.
    """
    layout = reader.layout
    calib = reader.require_calibration()
    threshold = reader.meta.precision.mask_at_extract
    v, c = layout.views_per_image, layout.crowds_per_image
    maps = [("views/attn_cls", "attn_cls", v)]
    if c:
        maps.append(("crowds/attn", "crowd_attn", c))
        if layout.gram:
            maps.append(("crowds/gram", "crowd_gram", c))
    replay = {"views/tokens": ErrorStats(False), "views/mask_score": ErrorStats(False)}
    replay.update({name: ErrorStats(True) for name, _, _ in maps})
    codec = {"views/tokens": ErrorStats(False)}
    codec.update({name: ErrorStats(True) for name, _, _ in maps})
    replayer.anchors.update(chosen.tolist())
    replayed = 0
    mask = {"threshold": threshold, "patches": 0, "flips": 0, "far_flips": 0}
    for images in _batches(chosen, batch_size):
        rendered = replayer.render(images)
        if not rendered.index:
            continue
        fresh = replayer.run(rendered)
        replayed += len(rendered.index)
        rows_v = _rows(rendered.index, v)
        tokens = fresh["tokens"]  # (B * V, 1 + L, D) float32
        score = mask_score(tokens[:, 1:], calib)  # (B * V, L)
        stored = reader.image_rows("views/tokens", rendered.index)
        if threshold is not None:
            # the store holds mask-multiplied tokens: follow its own keep/drop decisions (a score on the
            # threshold may round the other way here), and count those that disagree far from the threshold
            kept = np.any(stored[:, 1:] != 0, axis=-1)  # (B * V, L)
            flips = kept != (score > threshold)
            mask["patches"] += int(kept.size)
            mask["flips"] += int(flips.sum())
            mask["far_flips"] += int((flips & (np.abs(score - threshold) > tol.mask_score_max_abs)).sum())
            tokens = tokens.copy()
            tokens[:, 1:] *= kept[..., None]
        encoded = encode_tokens(tokens, layout.token_precision, calib.token_scales)
        replay["views/tokens"].add(tokens, decode_tokens(stored, calib.token_scales).numpy(), rows_v, (stored, encoded))
        codec["views/tokens"].add(tokens, decode_tokens(encoded, calib.token_scales).numpy(), rows_v)
        stored_score = reader.image_rows("views/mask_score", rendered.index)
        replay["views/mask_score"].add(score, stored_score, rows_v, (stored_score, score.astype(np.float16)))
        for name, key, per_image in maps:
            ref = fresh[key]
            stored = reader.image_rows(name, rendered.index)
            encoded = encode_map(ref, layout.map_precision)
            rows = _rows(rendered.index, per_image)
            replay[name].add(ref, decode_map(stored).numpy(), rows, (stored, encoded))
            codec[name].add(ref, decode_map(encoded).numpy(), rows)
    return replay, codec, replayed, mask if threshold is not None else None


def _source_check(replayer: _Replayer, chosen: np.ndarray) -> CheckResult:
    checked = replayer.checked
    anchors = [i for i in chosen.tolist() if i in checked]
    partners = [i for i in checked if i not in replayer.anchors]
    bad_anchors = [i for i in anchors if checked[i]]
    bad_partners = [i for i in partners if checked[i]]
    reasons: dict[str, int] = {}
    for i in bad_anchors + bad_partners:
        reasons[checked[i]] = reasons.get(checked[i], 0) + 1
    details = {"sampled_checked": len(anchors), "sampled_bad": len(bad_anchors), "partners_checked": len(partners),
               "partners_bad": len(bad_partners), "reasons": reasons}
    summary = (f"{len(anchors) - len(bad_anchors)}/{len(anchors)} sampled images and "
               f"{len(partners) - len(bad_partners)}/{len(partners)} crowd partners match the manifest hashes")
    return CheckResult("source", not bad_anchors and not bad_partners, summary, details, replayer.source_problems)


def _render_kind(name: str) -> str:
    """The kind of device a renderer ran on ("per-sample/cpu" and "batched/cpu" are one kind: the CPU path of the
    one renderer; a store's "batched/cuda" is another)."""
    return name.rsplit("/", 1)[-1]


def _stats_check(name: str, stats: dict[str, ErrorStats], layout: StoreLayout, tol: Tolerance,
                 extra_problems: list[str], replayed: int, wanted: int) -> CheckResult:
    per_image = {"views": layout.views_per_image, "crowds": max(layout.crowds_per_image, 1)}
    details = {key: s.result() for key, s in stats.items()}
    problems = list(extra_problems)
    for key, res in details.items():
        for p in _judge(key, res, tol, per_image[key.split("/")[0]]):
            _add_problem(problems, p)
    if not replayed:
        _add_problem(problems, "no sampled image could be replayed")
    details["images_replayed"] = replayed
    maps = "; ".join(f"{key} KL/row {details[key]['kl_per_row']:.2e}" for key in ("views/attn_cls", "crowds/attn")
                     if key in details)
    tokens = f"tokens rel L2 {details['views/tokens']['rel_l2']:.2e}"
    if name == "replay":
        max_abs = details["views/tokens"]["max_abs"]
        summary = f"{replayed}/{wanted} images replayed; {tokens} (max abs {max_abs:.2e}); {maps}"
    else:
        summary = f"{layout.token_precision} {tokens}; {layout.map_precision} {maps}"
    return CheckResult(name, not problems, summary, details, problems)


def _not_run(name: str, why: str) -> CheckResult:
    return CheckResult(name, False, f"not run: {why}", {}, [why])


def verify_store(
    url: str,
    data: str | Path,
    root: str | Path | None = None,
    sample: int = 64,
    seed: int = 0,
    teacher=None,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    tolerance: Tolerance | Mapping[str, float] | None = None,
    batch_size: int | None = None,
    storage_options: dict | None = None,
    render: str = "auto",
) -> VerifyReport:
    """Verify the store at ``url`` against its images at ``data`` (see the module docstring).

    Args:
        data: the images the store was extracted from (folder, list file or LMDB), ``root`` as for extract.
        sample: ok images to hash-check and replay (<= 0: all of them).
        seed: seed of the sample.
        teacher: an already built teacher (checked against the store's description).
        checkpoint: the teacher's weight file (see :func:`load_store_teacher`).
        device: auto, cpu, cuda or cuda:N; the teacher runs in float32 there.
        tolerance: limits, or a mapping of fields overriding the defaults of the store's precision.
        batch_size: images per teacher batch (default: the store's extract batch size).
        render: ``workers`` (per sample, CPU) or ``device`` (batched, on ``device``) replay; ``auto``: the kind
            of renderer the store was made with (its identity records it).

    Raises:
        StoreError: no store at ``url``; VerifyError: the teacher/checkpoint is not the store's.
    """
    from dpal_cache.devices import resolve_device
    from dpal_cache.extract.config import ExtractConfig

    start = time.perf_counter()
    reader = StoreReader(url, storage_options=storage_options, complete=False, check=False)  # verify reports it
    meta, layout, status = reader.meta, reader.layout, reader.status
    try:
        cfg = from_dict(ExtractConfig, meta.extract_config)
    except (ConfigError, KeyError) as exc:
        raise StoreError(f"{url}: the stored extract config cannot be read by this dpal-cache ({exc})") from None
    if isinstance(tolerance, Tolerance):
        tol = tolerance
    else:
        tol = Tolerance.for_precision(layout.token_precision, layout.map_precision, **dict(tolerance or {}))
    dev = resolve_device(device)
    teacher = load_store_teacher(meta, checkpoint, teacher).to(dev).eval()

    stored_render = str(meta.identity.get("render", "per-sample/cpu"))
    replay_render = render if render != "auto" else ("device" if stored_render.startswith("batched") else "workers")
    replay_name = render_backend(replay_render, dev)
    checks = [check_completeness(reader)]
    chosen = sample_images(status, sample, seed)
    log.info("verifying %s: %d of %d ok images sampled, teacher %s on %s", url, len(chosen),
             int((status == STATUS_OK).sum()), meta.teacher_name, dev)
    catalog = None
    source = open_source(data, root)  # no such folder: verify cannot run (SourceError)
    if not len(chosen):
        why = "the store has no ok image to sample"
    else:
        try:
            catalog = reader.open_catalog(source)
        except StoreError as exc:  # the source does not have the manifest's images: a failed check
            why = str(exc)
    if catalog is None:
        checks += [_not_run(name, why) for name in ("source", "replay", "precision")]
    elif reader.calibration is None:
        checks += [_not_run(name, "the store has no calibration") for name in ("source", "replay", "precision")]
    else:
        replayer = _Replayer(reader, catalog, teacher, dev, batched=replay_render == "device")
        replay, codec, replayed, mask = _replay(reader, replayer, chosen, batch_size or cfg.batch_size, tol)
        checks.append(_source_check(replayer, chosen))
        problems = replayer.render_problems
        if mask is not None and mask["far_flips"]:
            problems.append(f"views/tokens: {mask['far_flips']} patches kept/dropped against their fresh mask score "
                            f"(further than {tol.mask_score_max_abs:g} from mask_at_extract {mask['threshold']})")
        same = _render_kind(stored_render) == _render_kind(replay_name)
        replay_tol = tol if same else tol.widened(OTHER_RENDERER_FACTOR)
        checks.append(_stats_check("replay", replay, layout, replay_tol, problems, replayed, len(chosen)))
        checks[-1].details["renderer"] = {"store": stored_render, "replay": replay_name, "same": same,
                                          "limits_factor": 1.0 if same else OTHER_RENDERER_FACTOR}
        if mask is not None:
            checks[-1].details["mask_at_extract"] = mask
        checks.append(_stats_check("precision", codec, layout, tol, [], replayed, len(chosen)))
    report = VerifyReport(url=url, checks=checks, sampled=chosen.tolist(), tolerance=tol,
                          teacher=meta.teacher_name, device=str(dev), seconds=time.perf_counter() - start,
                          render={"store": stored_render, "replay": replay_name})
    log.info("verify %s: %s in %.1fs", url, "passed" if report.passed else "FAILED", report.seconds)
    return report

"""Frozen features for the probes: students, teachers and untrained baselines behind one interface,
and the linear read-outs (logistic / softmax regression) the probes fit on them.

    fx = open_model("student.safetensors", device="cuda")        # an exported student (+ student.json)
    fx = open_model("random:vit_tiny_patch16", img_size=(256, 128))   # UNTRAINED baseline, seeded
    fx = open_model("random:student.safetensors")                     # UNTRAINED, that export's architecture
    fx = teacher_extractor("path-b", checkpoint="path_b.pth", img_size=fx.img_size)
    g = fx.global_features(images)       # images uint8 (B, 3, H, W) or a list of (3, H, W) -> (B, D) float32
    p = fx.patch_features(images)        # (B, h, w, D) float32 on the model's patch grid
    g = fx.global_features_of(paths)     # image files, decoded with the project's one decoder

Every image is resized to the model's input size (bicubic, antialias: ``views.render.resize``,
the rule used for training views) and normalised with the model's mean/std. Features are the
student adapter's ``global`` / ``patches`` (class token for ViT, mean pool for Swin) or the
teacher's ``x_norm_clstoken`` / ``x_norm_patchtokens``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dpal_cache.data.decode import ImageDecodeError, decode_rgb
from dpal_cache.devices import resolve_device
from dpal_cache.normalization import IMAGENET_MEAN, IMAGENET_STD
from dpal_cache.views.render import resize

log = logging.getLogger(__name__)

RANDOM_PREFIX = "random:"
DEFAULT_IMG_SIZE = (256, 128)  # (H, W) of the training views: random students and teachers default to it

Images = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]

# ``start(description, total)`` -> ``advance(n)``: how the probes report progress (the CLI draws bars)
ProgressFn = Callable[[str, int], Callable[[int], None]]


def no_progress(description: str, total: int) -> Callable[[int], None]:
    """The default ProgressFn: report nothing."""
    return lambda n: None


def read_images(paths: Sequence[str | Path]) -> list[torch.Tensor]:
    """Image files -> uint8 (3, H, W) tensors, decoded by ``data.decode.decode_rgb`` (the one decoder)."""
    out = []
    for path in paths:
        try:
            rgb = decode_rgb(Path(path).read_bytes())  # (H, W, 3)
        except ImageDecodeError as exc:
            raise ValueError(f"{path}: not a usable image ({exc})") from None
        out.append(torch.from_numpy(rgb).permute(2, 0, 1))  # (3, H, W)
    return out


class FeatureExtractor:
    """A frozen model that turns uint8 images into global and patch features (numpy, float32).

    Subclasses implement :meth:`forward` on normalised inputs.

    Args:
        module: the model (moved to ``device``, put in eval mode).
        label: how reports name it; untrained models say so.
        img_size: (H, W) every image is resized to.
        mean, std: per-channel normalisation of ``image / 255``.
        device: where the forward runs (``auto``: CUDA when available).
        batch_size: images per forward.
        trained: False for random baselines (carried into every report).
        info: JSON-safe description (architecture, weights file, seed...).
    """

    def __init__(self, module: nn.Module, *, label: str, img_size: tuple[int, int],
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 device: str | torch.device | None = "cpu", batch_size: int = 64, trained: bool = True,
                 info: dict[str, Any] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        self.label = label
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.batch_size = batch_size
        self.trained = trained
        self.info = dict(info or {})
        self._mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1) * 255.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images (B, 3, H, W) -> global (B, D) and patches (B, h, w, D)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-safe record of the model for result files."""
        return {"label": self.label, "trained": self.trained, "img_size": list(self.img_size),
                "mean": list(self.mean), "std": list(self.std), **self.info}

    def _prepare(self, images: Images) -> torch.Tensor:
        """uint8 images -> (B, 3, H, W) uint8 at the model's input size (on the CPU)."""
        if isinstance(images, (torch.Tensor, np.ndarray)):
            if images.ndim != 4:
                raise ValueError(f"a batch of images must be uint8 (B, 3, H, W), got shape {tuple(images.shape)}")
            images = list(torch.as_tensor(images))
        batch = []
        for img in images:
            img = torch.as_tensor(img)
            if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
                raise ValueError(f"images must be uint8 (3, H, W), got {tuple(img.shape)} {img.dtype}")
            batch.append(resize(img, self.img_size))
        return torch.stack(batch)

    @torch.no_grad()
    def features(self, images: Images, patches: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Global (B, D) and, when ``patches``, patch features (B, h, w, D), both float32 numpy."""
        n = len(images)
        glob, pat = [], []
        for start in range(0, n, self.batch_size):
            x = self._prepare(images[start:start + self.batch_size]).to(self.device, non_blocking=True)
            x = (x.float() - self._mean) / self._std  # (b, 3, H, W)
            g, p = self.forward(x)
            glob.append(g.float().cpu().numpy())
            if patches:
                pat.append(p.float().cpu().numpy())
        if not glob:
            raise ValueError("no images")
        return np.concatenate(glob), (np.concatenate(pat) if patches else None)

    def global_features(self, images: Images) -> np.ndarray:
        """uint8 images (B, 3, H, W) (or a list of (3, H, W) of any sizes) -> (B, D) float32."""
        return self.features(images, patches=False)[0]

    def patch_features(self, images: Images) -> np.ndarray:
        """uint8 images -> patch features (B, h, w, D) float32 on the model's grid."""
        return self.features(images, patches=True)[1]

    def global_features_of(self, paths: Sequence[str | Path],
                           on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Image files -> (N, D) float32, read and decoded one batch at a time."""
        out = []
        for start in range(0, len(paths), self.batch_size):
            chunk = paths[start:start + self.batch_size]
            out.append(self.global_features(read_images(chunk)))
            if on_batch:
                on_batch(len(chunk))
        if not out:
            raise ValueError("no images")
        return np.concatenate(out)


class StudentExtractor(FeatureExtractor):
    """A ``train.students.Student``: ``global`` and ``patches`` on the H/16 x W/16 grid."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.module(x)
        B, _, H, W = x.shape
        h, w = self.module.default_grid((H, W))
        return out["global"], out["patches"].reshape(B, h, w, -1)


class TeacherExtractor(FeatureExtractor):
    """A ``teachers.model.Teacher``: ``x_norm_clstoken`` and ``x_norm_patchtokens``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.module(x)
        B, _, H, W = x.shape
        p = self.module.patch_size
        return out["x_norm_clstoken"], out["x_norm_patchtokens"].reshape(B, H // p, W // p, -1)


def _meta_stat(meta: dict[str, Any], key: str, default: tuple[float, float, float]) -> tuple[float, ...]:
    for where in (meta, meta.get("norm") or {}, meta.get("pretrained_cfg_overlay") or {}):
        if key in where:
            return tuple(float(v) for v in where[key])
    log.warning("student config has no %s: using ImageNet's", key)
    return default


def _student_config(path: Path) -> dict[str, Any]:
    config = path.with_suffix(".json")
    if not config.is_file():
        raise FileNotFoundError(f"{config} is missing: an exported student is {path.name} plus {config.name}")
    meta = json.loads(config.read_text())
    for key in ("timm_name", "timm_kwargs"):
        if key not in meta:
            raise ValueError(f"{config} has no {key!r}: not a `dpal-cache export` config")
    return meta


def _create_backbone(meta: dict[str, Any]) -> nn.Module:
    from dpal_cache.train.students import create_backbone

    # JSON turned the kwargs' tuples (img_size, depths...) into lists
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["timm_kwargs"].items()}
    return create_backbone(meta["timm_name"], kwargs, meta.get("set_attributes"))


def load_student_backbone(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """An exported student: ``timm.create_model`` from the JSON next to ``path``, weights loaded strictly.

    Args:
        path: ``student.safetensors``; ``student.json`` (``timm_name``, ``timm_kwargs``, mean/std)
            must sit next to it (``dpal-cache export`` writes both).

    Returns:
        The timm backbone (``num_classes=0``, eval mode) and the JSON as a dict.
    """
    from dpal_cache.teachers.checkpoint import CorruptCheckpointError, safetensors_load
    from dpal_cache.train.checkpoint import load_weights

    path = Path(path)
    export = "dpal-cache export RUN_DIR --out student.safetensors"
    if path.is_dir():
        what = "a training run" if (path / "last.pt").is_file() else "a folder"
        raise FileNotFoundError(f"{path} is {what}, not an exported student: export it first ({export}) and pass "
                                "the .safetensors file")
    if path.suffix == ".pt":
        raise FileNotFoundError(f"{path} is a training checkpoint, not an exported student: export its run first "
                                f"({export}) and pass the .safetensors file")
    if not path.is_file():
        raise FileNotFoundError(f"no student weights at {path} (an exported student: {export})")
    meta = _student_config(path)
    model = _create_backbone(meta)
    try:
        weights = safetensors_load(path)
    except CorruptCheckpointError as exc:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt: {exc.detail}): "
                         "export it again with `dpal-cache export`") from None
    hint = (f"{path.name} does not fit {path.with_suffix('.json').name}: export the run again with "
            "`dpal-cache export` (it writes both), or pass the matching --model")
    load_weights(model, weights, path, hint=hint)
    return model.eval(), meta


def student_extractor(path: str | Path, device: str | torch.device | None = "cpu", batch_size: int = 64,
                      untrained: bool = False, seed: int = 0) -> StudentExtractor:
    """Features of an exported student (``student.safetensors`` + ``student.json``).

    With ``untrained``, the same architecture (and input size) with a fresh init under ``seed``
    instead of the weights: the baseline the trained student must beat (only the JSON is read).
    """
    from dpal_cache.train.students import Student

    path = Path(path)
    if untrained:
        meta = _student_config(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = _create_backbone(meta).eval()
        label = f"UNTRAINED {meta['timm_name']} (architecture of {path.name}, seed {seed})"
        info = {"kind": "random_student", "architecture_of": str(path), "seed": seed}
    else:
        backbone, meta = load_student_backbone(path)
        label = f"student {meta['timm_name']} ({path.name})"
        info = {"kind": "student", "weights": str(path)}
        if meta.get("run"):
            info["step"] = meta["run"].get("step")
    kwargs = meta["timm_kwargs"]
    img_size = tuple(kwargs.get("img_size") or meta.get("img_size") or DEFAULT_IMG_SIZE)
    student = Student(backbone, meta["timm_name"], kwargs, set_attributes=meta.get("set_attributes"))
    info.update(timm_name=meta["timm_name"], parameters=sum(p.numel() for p in backbone.parameters()))
    return StudentExtractor(student, label=label, img_size=img_size, mean=_meta_stat(meta, "mean", IMAGENET_MEAN),
                            std=_meta_stat(meta, "std", IMAGENET_STD), device=device, batch_size=batch_size,
                            trained=not untrained, info=info)


def random_student_extractor(name: str, img_size: tuple[int, int] = DEFAULT_IMG_SIZE, seed: int = 0,
                             device: str | torch.device | None = "cpu", batch_size: int = 64,
                             **timm_overrides: Any) -> StudentExtractor:
    """An UNTRAINED student (fresh timm init under ``seed``): the baseline a trained student must beat."""
    from dpal_cache.train.students import build_student

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = build_student(name, img_size=tuple(img_size), **timm_overrides)
    info = {"kind": "random_student", "name": name, "timm_name": student.timm_name, "seed": seed,
            "parameters": sum(p.numel() for p in student.parameters())}
    return StudentExtractor(student, label=f"UNTRAINED {RANDOM_PREFIX}{name} (seed {seed})", img_size=img_size,
                            device=device, batch_size=batch_size, trained=False, info=info)


def teacher_extractor(name: str, checkpoint: str | Path | None = None, *, img_size: tuple[int, int] = DEFAULT_IMG_SIZE,
                      pos_embed: str = "timm", seed: int = 0, device: str | torch.device | None = "cpu",
                      batch_size: int = 64) -> TeacherExtractor:
    """A registry teacher (``path-b``, ``timm:...``, ``random:vit_tiny``...) at ``img_size``."""
    from dpal_cache.teachers.model import load_teacher

    teacher = load_teacher(name, checkpoint, pos_embed=pos_embed, seed=seed)
    p = teacher.patch_size
    if img_size[0] % p or img_size[1] % p:
        raise ValueError(f"teacher input {img_size} must be a multiple of its patch size {p}")
    random = teacher.spec.random
    label = f"teacher {name}" + (f" (RANDOM weights, seed {seed})" if random else "")
    info = {"kind": "teacher", **teacher.describe()}
    return TeacherExtractor(teacher, label=label, img_size=img_size, mean=teacher.mean, std=teacher.std,
                            device=device, batch_size=batch_size, trained=not random, info=info)


def open_model(model: str | Path, *, img_size: tuple[int, int] | None = None, seed: int = 0,
               device: str | torch.device | None = "cpu", batch_size: int = 64) -> StudentExtractor:
    """``--model``: an exported ``student.safetensors``; ``random:<student name>`` (untrained, built at
    ``img_size``); or ``random:<student.safetensors>`` (untrained, that export's exact architecture)."""
    text = str(model)
    if text.startswith(RANDOM_PREFIX):
        rest = text[len(RANDOM_PREFIX):]
        if rest.endswith(".safetensors"):
            return student_extractor(rest, device=device, batch_size=batch_size, untrained=True, seed=seed)
        return random_student_extractor(rest, img_size or DEFAULT_IMG_SIZE, seed=seed, device=device,
                                        batch_size=batch_size)
    return student_extractor(text, device=device, batch_size=batch_size)  # at the size it was trained at


# ---------------------------------------------------------------------------------------------
# linear read-outs on frozen features


@dataclass(frozen=True)
class LinearProbe:
    """A linear read-out ``((x - mean) / std) @ weight + bias`` fitted on frozen features.

    ``kind``: ``binary`` (independent sigmoids, multi-label) or ``multiclass`` (softmax).
    """

    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)
    weight: torch.Tensor  # (D, C)
    bias: torch.Tensor  # (C,)
    kind: str

    def logits(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., C), in the probe's dtype on the probe's device."""
        x = torch.as_tensor(x).to(self.weight)
        return ((x - self.mean) / self.std) @ self.weight + self.bias

    def predict_proba(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """(..., D) -> probabilities (..., C): sigmoids (binary) or a softmax (multiclass), float64 numpy."""
        z = self.logits(x)
        p = torch.sigmoid(z) if self.kind == "binary" else torch.softmax(z, dim=-1)
        return p.double().cpu().numpy()


def fit_linear_probe(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, *, kind: str = "binary",
                     num_classes: int | None = None, l2: float = 1e-4, max_iter: int = 200,
                     dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> LinearProbe:
    """Full-batch L-BFGS logistic (``binary``, y (N, C) in {0, 1}) or softmax (``multiclass``, y (N,) ints) regression.

    Loss: mean over samples of the summed binary cross-entropies (= C independent logistic
    regressions) or of the cross-entropy, plus ``l2 / 2 * |W|^2`` (bias not penalised).
    Features are standardised with the training mean/std first (constant features keep std 1).
    Zero init, full batch and a strong-Wolfe line search: the same inputs give the same probe.
    """
    if kind not in ("binary", "multiclass"):
        raise ValueError(f"kind must be binary or multiclass, got {kind!r}")
    x = torch.as_tensor(x).to(device=device, dtype=dtype)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be (N, D) with N > 0, got {tuple(x.shape)}")
    if kind == "binary":
        y = torch.as_tensor(y).to(device=device, dtype=dtype)
        if y.ndim != 2 or len(y) != len(x):
            raise ValueError(f"binary labels must be (N, C) with N = {len(x)}, got {tuple(y.shape)}")
        n_out = y.shape[1]
    else:
        y = torch.as_tensor(y).to(device=device, dtype=torch.long)
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"class labels must be (N,) with N = {len(x)}, got {tuple(y.shape)}")
        n_out = int(num_classes if num_classes is not None else int(y.max()) + 1)
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    xs = (x - mean) / std  # (N, D)
    weight = torch.zeros(x.shape[1], n_out, dtype=dtype, device=device, requires_grad=True)
    bias = torch.zeros(n_out, dtype=dtype, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = xs @ weight + bias  # (N, C)
        if kind == "binary":
            data = nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum") / len(xs)
        else:
            data = nn.functional.cross_entropy(z, y)
        loss = data + 0.5 * l2 * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        loss = opt.step(closure)
    log.debug("linear probe (%s, %d x %d -> %d): loss %.5f", kind, *x.shape, n_out, float(loss.detach()))
    return LinearProbe(mean, std, weight.detach(), bias.detach(), kind)

"""``viz patterns``: the paper's Figure 5 on real data, teacher (from the store) next to a student.

For ``n`` images spread over the store's usable images:

- (a) the global view, re-rendered from its stored parameters (the pixels the teacher saw);
- (b) PCA of patch tokens as RGB: three components fitted jointly over these views' patch tokens,
  separately for the teacher (stored tokens) and the student (its tokens on the same grid), each
  component min-max scaled over all the views;
- (c) foreground masks: the stored teacher mask score, and the student's first component made
  person-positive (the calibration's centre-versus-border rule), min-max scaled and thresholded;
- (d) the crowd image, re-rendered from its recipe, with the PCA of the teacher's stored patch
  attention rows (``crowds/attn``) and of the student's crowd patch tokens;
- (e) class tokens of a few identities (all their views) projected to 2-D by PCA, coloured by
  the Market-1501 person id parsed from the file name (by image when names do not parse).

    result = pattern_report("feats.zarr", "data/market/bounding_box_train", "student.safetensors", Path("viz"))
    result["files"]["report"]        # viz/report.md, which embeds patterns.png, crowds.png, embedding.png
    pattern_report(..., model="random:vit_tiny_patch16", ...)   # an UNTRAINED student, labelled as such
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dpal_cache.config import from_dict
from dpal_cache.data.catalog import ImageUnavailable
from dpal_cache.data.sources import open_source
from dpal_cache.eval.features import FeatureExtractor, open_model
from dpal_cache.eval.reid import MARKET_PATTERN
from dpal_cache.store.calibration import centre_mask
from dpal_cache.store.codecs import decode_map, decode_tokens
from dpal_cache.store.errors import StoreError
from dpal_cache.store.reader import StoreReader
from dpal_cache.views.config import ViewsConfig
from dpal_cache.views.crowd import CrowdRecipe, render_crowd
from dpal_cache.views.preview import preview_indices, to_pil
from dpal_cache.views.render import render_view, resize
from dpal_cache.viz import draw

log = logging.getLogger(__name__)

TILE_HEIGHT = 192  # display height of views and crowd images (integer enlargement of small views)
MASK_THRESHOLD = 0.5
FILES = {"patterns": "patterns.png", "crowds": "crowds.png", "embedding": "embedding.png",
         "report": "report.md", "html": "report.html", "json": "report.json"}


class PatternError(Exception):
    """The store and the images given cannot make the report; the message says why."""


# ---------------------------------------------------------------------------------------------
# numerics (pure numpy)


def pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal axes of the rows of ``x`` (M, F), exact (an eigendecomposition, no random sketch).

    Returns:
        mean (F,), components (k, F) (zero rows past the rank), explained variance fractions (k,).
        Signs are deterministic: each component's largest-magnitude loading is positive.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    c = x - mean
    m, f = c.shape
    # eigh of the smaller of the (F, F) covariance and the (M, M) Gram matrix: same nonzero spectrum
    if f <= m:
        evals, evecs = np.linalg.eigh(c.T @ c)
        evals, axes = evals[::-1], evecs[:, ::-1].T  # (F,), (F, F) largest first
    else:
        evals, evecs = np.linalg.eigh(c @ c.T)
        evals, u = evals[::-1], evecs[:, ::-1]
        axes = (c.T @ u / np.sqrt(np.maximum(evals, 1e-300))).T  # (M, F) unit rows where evals > 0
    evals = np.maximum(evals, 0.0)
    rank = int((evals > evals[0] * 1e-12).sum()) if evals.size and evals[0] > 0 else 0
    n = min(k, rank)
    comps = np.zeros((k, f))
    explained = np.zeros(k)
    comps[:n] = axes[:n]
    explained[:n] = evals[:n] / evals.sum()
    big = comps[np.arange(k), np.abs(comps).argmax(axis=1)]
    comps *= np.where(big < 0, -1.0, 1.0)[:, None]
    return mean, comps, explained


def minmax(x: np.ndarray, axis: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Scale to [0, 1] over ``axis`` (constant inputs map to 0.5)."""
    lo, hi = np.min(x, axis=axis, keepdims=True), np.max(x, axis=axis, keepdims=True)
    span = hi - lo
    return np.where(span > 1e-12, (x - lo) / np.where(span > 1e-12, span, 1.0), 0.5)


def pca_maps(features: np.ndarray, grid: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (M, L, F) of M images -> RGB maps (M, L, 3) in [0, 1] and the explained fractions (3,).

    Three components are fitted jointly over all M * L rows and each is min-max scaled over them.
    With a person-crop ``grid``, the first component is made person-positive: the centre of the grid
    (``extract.calibrate.centre_mask``) projects higher than its border, as the store's mask score.
    """
    m, length, f = features.shape
    flat = features.reshape(-1, f)
    mean, comps, explained = pca(flat, 3)
    proj = ((flat - mean) @ comps.T).reshape(m, length, 3)  # (M, L, 3)
    if grid is not None:
        centre = centre_mask(grid)
        if centre.any() and not centre.all() and proj[:, centre, 0].mean() < proj[:, ~centre, 0].mean():
            proj[..., 0] *= -1
    return minmax(proj, axis=(0, 1)), explained


def nn_same_class(x: np.ndarray, classes: np.ndarray, groups: np.ndarray) -> float | None:
    """Fraction of points whose cosine nearest neighbour among points of other groups (images) has the
    same class; None when no point has a same-class point in another group."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    sim[groups[:, None] == groups[None, :]] = -np.inf  # never the same image (its other views)
    has_pair = ((classes[:, None] == classes[None, :]) & (groups[:, None] != groups[None, :])).any(axis=1)
    if not has_pair.any():
        return None
    nearest = sim.argmax(axis=1)
    return float(np.mean(classes[nearest][has_pair] == classes[has_pair]))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the IoU of two boolean (M, L) masks (rows where both are empty count as 1)."""
    inter = (a & b).sum(axis=1)
    union = (a | b).sum(axis=1)
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def person_id(key: str) -> int | None:
    """Market-1501 person id of an image key (``0002_c1s1_000451_03.jpg`` -> 2), None when it does not parse."""
    match = MARKET_PATTERN.search(Path(key).name)
    return int(match.group(1)) if match else None


def embedding_selection(keys: list[str], ok: np.ndarray, classes: int, per_class: int
                        ) -> tuple[np.ndarray, np.ndarray, list[str], bool]:
    """Images for the class-token embedding: up to ``per_class`` images of each of up to ``classes``
    identities spread over the sorted ids (real ids preferred over junk/distractors <= 0); when some
    key does not parse, ``classes * per_class`` images spread over ``ok``, each its own class.

    Returns:
        image indices (m,), class number per image (m,), class names, whether classes are identities.
    """
    pids = [person_id(keys[i]) for i in ok]
    if ok.size and all(p is not None for p in pids):
        pids = np.asarray(pids)
        uniq = np.unique(pids)
        if (uniq > 0).any():
            uniq = uniq[uniq > 0]
        chosen = uniq[np.unique(np.linspace(0, len(uniq) - 1, min(classes, len(uniq))).round().astype(int))]
        images, labels = [], []
        for c, pid in enumerate(chosen):
            of_id = ok[pids == pid]
            take = of_id[np.unique(np.linspace(0, len(of_id) - 1, min(per_class, len(of_id))).round().astype(int))]
            images += take.tolist()
            labels += [c] * len(take)
        return np.asarray(images, dtype=np.int64), np.asarray(labels), [f"id {p}" for p in chosen], True
    picks = ok[preview_indices(len(ok), classes * per_class)]
    return picks, np.arange(len(picks)), [f"#{i}" for i in picks], False


# ---------------------------------------------------------------------------------------------
# the store, its images and the student


class StoreImages:
    """A store with the images it was extracted from: stored rows, re-rendered views and crowd images."""

    def __init__(self, store: str, data: str | Path, storage_options: dict | None = None):
        self.url = str(store)
        try:  # a store still being written is fine: its done blocks are shown
            self.reader = StoreReader(self.url, open_source(data), storage_options=storage_options, complete=False)
        except StoreError as exc:
            raise PatternError(str(exc)) from None
        reader = self.reader
        self.meta, layout = reader.meta, reader.layout
        self.catalog = reader.catalog
        self.keys: list[str] = reader.manifest.column("key").to_pylist()
        self.views: ViewsConfig = from_dict(ViewsConfig, self.meta.views)
        self.v, self.c = layout.views_per_image, layout.crowds_per_image
        self.view_grid, self.crowd_grid = tuple(layout.view_grid), tuple(layout.crowd_grid)
        self.ok = reader.usable
        if not len(self.ok):
            raise PatternError(f"{store} holds no extracted image yet (no block done, or every image failed)")
        try:
            self.token_scales = reader.require_calibration().token_scales
        except StoreError as exc:
            raise PatternError(str(exc)) from None
        self.backgrounds = reader.backgrounds
        self._rgb: dict[int, np.ndarray] = {}

    def rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows of a store array as stored, in the order asked."""
        rows = np.asarray(rows, dtype=np.int64)
        small = {"views/params": self.reader.params, "crowds/recipe": self.reader.recipes}
        return small[name][rows] if name in small else self.reader.read(name, rows)

    def tokens(self, rows: np.ndarray) -> np.ndarray:
        """Decoded teacher tokens (R, 1 + L, D) float32 of view rows."""
        return decode_tokens(self.rows("views/tokens", rows), self.token_scales).numpy()

    def image(self, index: int) -> np.ndarray:
        if index not in self._rgb:
            try:
                self._rgb[index] = self.catalog.load(index)
            except ImageUnavailable as exc:
                raise PatternError(f"{exc}: the images no longer match the store's manifest "
                                   "(restore the file or re-run scan + extract)") from None
        return self._rgb[index]

    def render_views(self, indices: np.ndarray, views: list[int]) -> torch.Tensor:
        """uint8 (len(indices) * len(views), 3, H, W): each image's listed views, image-major."""
        params = self.rows("views/params", (indices[:, None] * self.v + np.asarray(views)).reshape(-1))
        out = [render_view(self.image(int(i)), p) for i, p in zip(np.repeat(indices, len(views)), params, strict=True)]
        return torch.stack(out)

    def render_crowds(self, indices: np.ndarray, crowd: int = 0) -> tuple[torch.Tensor, list[CrowdRecipe]]:
        """uint8 (n, 3, Hc, Wc) crowd images ``crowd`` of the images, and their recipes."""
        recipes = [CrowdRecipe.from_vector(r) for r in self.rows("crowds/recipe", indices * self.c + crowd)]
        out = []
        for r in recipes:
            background = None
            if r.background_kind == "folder":
                if self.backgrounds is None:
                    raise PatternError("the store's crowds use a background folder that is not configured")
                background = self.backgrounds.load(r.background_index)
            out.append(render_crowd(r, {j: self.image(j) for j in r.dataset_indices()}, background))
        return torch.stack(out), recipes

    def teacher_label(self) -> str:
        return self.meta.teacher_name + (" (RANDOM weights: mechanics only)" if self.meta.teacher.get("random") else "")


@torch.inference_mode()
def student_tokens(fx: FeatureExtractor, images: torch.Tensor, grid: tuple[int, int], batch_size: int = 32
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Run a student extractor's ``Student`` on uint8 images (B, 3, H, W) at their own size.

    Returns:
        global tokens (B, Ds) and patch tokens (B, h * w, Ds) on ``grid`` (Swin's coarse grid upsampled).
    """
    student = fx.module
    stride = student.native_stride
    H, W = images.shape[-2:]
    if H % stride or W % stride:  # e.g. a Swin (stride 32) on 48-pixel views: round up, never crop
        images = torch.stack([resize(x, (-(-H // stride) * stride, -(-W // stride) * stride)) for x in images])
    mean = torch.tensor(fx.mean, device=fx.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(fx.std, device=fx.device).view(1, 3, 1, 1) * 255.0
    glob, pat = [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(fx.device).float()
        out = student((x - mean) / std, grid=grid)
        glob.append(out["global"].float().cpu().numpy())  # (b, Ds)
        pat.append(out["patches"].float().cpu().numpy())  # (b, h * w, Ds)
    return np.concatenate(glob), np.concatenate(pat)


def _short(key: str, width: int = 26) -> str:
    return key if len(key) <= width else "..." + key[-(width - 3):]


def _percent(x: float) -> str:
    return f"{100 * x:.0f}%"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


# ---------------------------------------------------------------------------------------------
# figures


def _tile_size(H: int, W: int) -> tuple[int, int]:
    """(height, width) an H x W image is shown at: an integer enlargement to about TILE_HEIGHT rows."""
    tile_h = max(1, round(TILE_HEIGHT / H)) * H
    return tile_h, round(W * tile_h / H)


def _patterns_figure(src: StoreImages, idx: np.ndarray, views: torch.Tensor, t_rgb, s_rgb, t_mask, s_mask,
                     student: str, explained: dict[str, np.ndarray], threshold: float) -> Image.Image:
    h, w = src.view_grid
    H, W = views.shape[-2:]
    tile_h, tile_w = _tile_size(H, W)
    rows, titles = [], []
    for k, i in enumerate(idx):
        rows.append([
            draw.upscale(to_pil(views[k]), tile_h),
            draw.map_image(t_rgb[k].reshape(h, w, 3), tile_h, tile_w),
            draw.map_image(s_rgb[k].reshape(h, w, 3), tile_h, tile_w),
            draw.map_image(t_mask[k].reshape(h, w), tile_h, tile_w),
            draw.map_image(s_mask[k].reshape(h, w).astype(float), tile_h, tile_w),
        ])
        pid = person_id(src.keys[i])
        titles.append([f"#{i}", _short(src.keys[i])] + ([f"id {pid}"] if pid is not None else []))
    te, se = explained["teacher"], explained["student"]
    cols = [f"(a) view {H}x{W}", f"(b) teacher PCA\n{_percent(te.sum())} of variance",
            f"(b) student PCA\n{_percent(se.sum())} of variance", "(c) teacher mask\nscore 0 (black)..1 (white)",
            f"(c) student mask\nPC1 > {threshold:g} (white)"]
    notes = [f"teacher: {src.teacher_label()} (tokens from the store)", f"student: {student}",
             (f"PCA: 3 components fitted jointly over these {len(idx)} views' {h}x{w} patch tokens, per model; "
              "each min-max scaled -> R, G, B")]
    return draw.image_grid(rows, col_titles=cols, row_titles=titles, notes=notes,
                           title="Patch-token patterns and foreground masks, teacher vs student")


def _crowds_figure(src: StoreImages, idx: np.ndarray, crowds: torch.Tensor, recipes: list[CrowdRecipe],
                   t_rgb, s_rgb, student: str, explained: dict[str, np.ndarray]) -> Image.Image:
    h, w = src.crowd_grid
    H, W = crowds.shape[-2:]
    tile_h, tile_w = _tile_size(H, W)
    rows, titles = [], []
    for k, i in enumerate(idx):
        rows.append([draw.upscale(to_pil(crowds[k]), tile_h),
                     draw.map_image(t_rgb[k].reshape(h, w, 3), tile_h, tile_w),
                     draw.map_image(s_rgb[k].reshape(h, w, 3), tile_h, tile_w)])
        sources = " ".join(f"#{p.index}" for p in recipes[k].pastes)
        titles.append([f"#{i} crowd 0", recipes[k].mode, f"from {sources}"])
    cols = [f"(d) crowd image {H}x{W}", f"teacher attention PCA\n{_percent(explained['teacher'].sum())} of variance",
            f"student patch PCA\n{_percent(explained['student'].sum())} of variance"]
    notes = [f"teacher: {src.teacher_label()}: rows of its stored patch-to-patch attention (crowds/attn)",
             f"student: {student}: its patch tokens on the {h}x{w} grid",
             "PCA: 3 components fitted jointly over these crowd images, per model; min-max per component -> RGB"]
    return draw.image_grid(rows, col_titles=cols, row_titles=titles, notes=notes,
                           title="Crowd images: teacher attention vs student tokens")


def _embedding_figure(t_cls: np.ndarray, s_cls: np.ndarray, classes: np.ndarray, names: list[str],
                      view_of_point: np.ndarray, by_identity: bool, student: str, teacher: str,
                      nn: dict[str, float | None]) -> Image.Image:
    panels = []
    for who, x in (("teacher", t_cls), ("student", s_cls)):
        mean, comps, explained = pca(x, 2)
        xy = (x - mean) @ comps.T  # (P, 2)
        panels.append(draw.scatter_plot(xy, classes, title=who,
                                        xlabel=f"PC1 ({_percent(explained[0])} of variance)",
                                        ylabel=f"PC2 ({_percent(explained[1])})", hollow=view_of_point > 0))
    entries = [(name, draw.colour(c)) for c, name in enumerate(names)]
    panels.append(draw.legend(entries, title="identity" if by_identity else "image"))
    notes = [f"teacher: {teacher} (class tokens from the store); student: {student}",
             f"{len(classes)} views of {len(np.unique(classes)) if by_identity else len(names)} "
             + ("identities (person id from the Market-1501 file name)" if by_identity
                else "images (file names carry no person id: coloured by image)")
             + ("; filled dot: view 0, ring: other views" if (view_of_point > 0).any() else "")]
    if by_identity:
        notes.append(f"1-NN same identity (cosine, full dimension, other images only): teacher {_fmt(nn['teacher'])}, "
                     f"student {_fmt(nn['student'])}")
    return draw.hstack(panels, title="(e) Class tokens, PCA to 2-D (each model its own projection)", notes=notes)


# ---------------------------------------------------------------------------------------------
# the report


def _patch_stage(src: StoreImages, fx: FeatureExtractor, idx: np.ndarray, threshold: float
                 ) -> tuple[Image.Image, dict[str, Any], str]:
    """(a)-(c): views, teacher and student patch PCA, masks -> figure, stats, caption."""
    views = src.render_views(idx, [0])  # (n, 3, H, W)
    t_tokens = src.tokens(idx * src.v)  # (n, 1 + L, D)
    _, s_patches = student_tokens(fx, views, src.view_grid)  # (n, L, Ds)
    t_rgb, t_expl = pca_maps(t_tokens[:, 1:], src.view_grid)
    s_rgb, s_expl = pca_maps(s_patches, src.view_grid)
    t_score = src.rows("views/mask_score", idx * src.v).astype(np.float32)  # (n, L)
    s_mask = s_rgb[..., 0] > threshold  # (n, L): first component, person-positive, min-max scaled
    iou = mask_iou(t_score > threshold, s_mask)
    fig = _patterns_figure(src, idx, views, t_rgb, s_rgb, t_score, s_mask, fx.label,
                           {"teacher": t_expl, "student": s_expl}, threshold)
    stats = {"pca_explained": {"teacher": t_expl.tolist(), "student": s_expl.tolist()}, "mask_iou": iou,
             "mask_threshold": threshold}
    caption = (f"(a) {len(idx)} global views re-rendered from their stored parameters; (b) PCA of patch tokens as "
               "RGB, teacher from the store vs student on the same view; (c) teacher mask score and student "
               f"first-component mask (IoU of the two at {threshold:g}: {iou:.2f}).")
    return fig, stats, caption


def _crowd_stage(src: StoreImages, fx: FeatureExtractor, idx: np.ndarray) -> tuple[Image.Image, dict[str, Any], str]:
    """(d): crowd images, teacher attention PCA, student patch PCA -> figure, stats, caption."""
    crowds, recipes = src.render_crowds(idx)  # (n, 3, Hc, Wc)
    attn = decode_map(src.rows("crowds/attn", idx * src.c)).numpy()  # (n, Lc, Lc): each patch's attention row
    _, s_crowd = student_tokens(fx, crowds, src.crowd_grid)  # (n, Lc, Ds)
    t_rgb, t_expl = pca_maps(attn)
    s_rgb, s_expl = pca_maps(s_crowd)
    fig = _crowds_figure(src, idx, crowds, recipes, t_rgb, s_rgb, fx.label, {"teacher": t_expl, "student": s_expl})
    caption = ("(d) crowd images re-rendered from their stored recipes, with the PCA of the teacher's stored patch "
               "attention and of the student's patch tokens.")
    return fig, {"pca_explained": {"teacher": t_expl.tolist(), "student": s_expl.tolist()}}, caption


def _embedding_stage(src: StoreImages, fx: FeatureExtractor, ids: int, per_id: int
                     ) -> tuple[Image.Image, dict[str, Any], str]:
    """(e): class tokens of every view of a few identities, 2-D PCA -> figure, stats, caption."""
    e_idx, e_class, names, by_identity = embedding_selection(src.keys, src.ok, ids, per_id)
    e_views = src.render_views(e_idx, list(range(src.v)))  # (m * V, 3, H, W)
    t_cls = src.tokens((e_idx[:, None] * src.v + np.arange(src.v)).reshape(-1))[:, 0]  # (m * V, D)
    s_cls, _ = student_tokens(fx, e_views, src.view_grid)  # (m * V, Ds)
    classes = np.repeat(e_class, src.v)
    groups = np.repeat(e_idx, src.v)
    nn = {"teacher": nn_same_class(t_cls, classes, groups) if by_identity else None,
          "student": nn_same_class(s_cls, classes, groups) if by_identity else None}
    fig = _embedding_figure(t_cls, s_cls, classes, names, np.tile(np.arange(src.v), len(e_idx)), by_identity,
                            fx.label, src.teacher_label(), nn)
    caption = (f"(e) class tokens of {len(classes)} views projected to 2-D by PCA, coloured by "
               + ("person id" if by_identity else "image (keys carry no person id)")
               + (f"; nearest-neighbour same identity: teacher {_fmt(nn['teacher'])}, student {_fmt(nn['student'])}."
                  if by_identity else "."))
    return fig, {"nn_same_identity": nn, "points": len(classes), "by_identity": by_identity}, caption


def _write_report(out_dir: Path, files: dict[str, str], captions: dict[str, str], src: StoreImages,
                  fx: FeatureExtractor, idx: np.ndarray, stats: dict[str, Any]) -> None:
    """``report.md`` and ``report.html``: the figures with one-line captions, and a small table."""
    student = fx.label
    heading = f"Learned patterns: {'' if fx.trained or 'UNTRAINED' in student else 'UNTRAINED '}{student}"
    untrained = "" if fx.trained else " (an untrained baseline: random weights, no distillation)"
    summary = [f"Teacher: {src.teacher_label()}, tokens read from the store `{src.url}`.",
               f"Student: {student}{untrained}.",
               f"{len(idx)} images spread over the store's {len(src.ok)} usable images: "
               + ", ".join(f"#{i}" for i in idx) + "."]
    patches, nn = stats["patches"], stats["embedding"]["nn_same_identity"]
    table = [("patch PCA variance (3 components)", _percent(sum(patches["pca_explained"]["teacher"])),
              _percent(sum(patches["pca_explained"]["student"]))),
             (f"mask IoU with the teacher's (score > {patches['mask_threshold']:g})", "reference",
              f"{patches['mask_iou']:.2f}")]
    if stats["embedding"]["by_identity"]:
        table.append(("1-NN same identity (class tokens)", _fmt(nn["teacher"]), _fmt(nn["student"])))
    md = [f"# {heading}", "", *summary, ""]
    for name, caption in captions.items():
        md += [f"![{name}]({files[name]})", "", f"*{caption}*", ""]
    md += ["| measure | teacher | student |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in table]
    (out_dir / FILES["report"]).write_text("\n".join(md) + "\n")
    e = html.escape
    body = [f"<h1>{e(heading)}</h1>"] + [f"<p>{e(s)}</p>" for s in summary]
    for name, caption in captions.items():
        body.append(f'<figure><img src="{e(files[name])}" alt="{e(name)}"><figcaption>{e(caption)}</figcaption>'
                    "</figure>")
    rows = "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td></tr>" for a, b, c in table)
    body.append(f"<table><tr><th>measure</th><th>teacher</th><th>student</th></tr>{rows}</table>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}img{max-width:100%}"
             "figcaption{color:#444;margin:.3em 0 1.5em}td,th{padding:2px 10px;border-bottom:1px solid #ddd}")
    (out_dir / FILES["html"]).write_text(f"<!doctype html><meta charset='utf-8'><title>{e(heading)}</title>"
                                         f"<style>{style}</style>\n" + "\n".join(body) + "\n")


def pattern_report(store: str, data: str | Path, model: str | Path, out_dir: str | Path, n: int = 6, *,
                   embed_ids: int = 10, embed_per_id: int = 4, threshold: float = MASK_THRESHOLD,
                   device: str | torch.device | None = "cpu", seed: int = 0, storage_options: dict | None = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Draw the teacher-vs-student pattern figures of ``model`` on ``store`` and write a report.

    Args:
        store: a feature store (path or fsspec URL); incomplete stores use their finished blocks.
        data: the images it was extracted from (same keys and order as its manifest).
        model: an exported ``student.safetensors`` (with its ``.json``) or ``random:<student name>``
            (an UNTRAINED student at the store's view size, seeded with ``seed``).
        out_dir: where the PNGs, ``report.md``, ``report.html`` and ``report.json`` go.
        n: images shown in the pattern and crowd figures, spread over the store's usable images.
        embed_ids, embed_per_id: identities and images per identity in the class-token embedding.
        threshold: the student mask is its person-positive first component, min-max scaled, above this.
        device: where the student runs (``auto``: CUDA when available).
        progress: called with a short description before each stage.

    Returns:
        ``files`` (name -> path), ``stats`` (explained variances, 1-NN same identity, mask IoU),
        ``model`` (the student's description, ``trained`` False for random ones), ``teacher``, ``images``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    step = progress or (lambda _: None)
    out_dir = Path(out_dir)
    step("reading the store")
    src = StoreImages(store, data, storage_options)
    fx = open_model(model, img_size=tuple(src.views.global_view.size), seed=seed, device=device)
    idx = src.ok[preview_indices(len(src.ok), n)]  # (n,) image indices
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {k: str(out_dir / v) for k, v in FILES.items()}
    stats: dict[str, Any] = {}
    captions: dict[str, str] = {}

    step("patch tokens")
    fig, stats["patches"], captions["patterns"] = _patch_stage(src, fx, idx, threshold)
    fig.save(files["patterns"])
    if src.c:
        step("crowd images")
        fig, stats["crowds"], captions["crowds"] = _crowd_stage(src, fx, idx)
        fig.save(files["crowds"])
    else:
        del files["crowds"]
    step("class-token embedding")
    fig, stats["embedding"], captions["embedding"] = _embedding_stage(src, fx, embed_ids, embed_per_id)
    fig.save(files["embedding"])

    step("report")
    _write_report(out_dir, {k: Path(v).name for k, v in files.items()}, captions, src, fx, idx, stats)
    result = {"files": files, "stats": stats, "model": fx.describe(), "teacher": src.meta.teacher,
              "store": src.url, "images": [int(i) for i in idx]}
    Path(files["json"]).write_text(json.dumps(result, indent=2, default=str) + "\n")
    log.debug("pattern report of %s written to %s", fx.label, out_dir)
    return result

"""Render whole batches on one device: global views, local crops and crowd images from their stored parameters.

The per-sample renderer (``render.render_view``, ``crowd.render_crowd``) turns one image at a time into its
views on the CPU. ``BatchRenderer`` takes a batch of decoded sources (uint8 (3, H, W) tensors of any sizes,
already on the device: decoded there by ``decode.DeviceDecoder``, or sent there) and the same parameter
vectors, and renders every view of the batch with a few batched tensor operations:

- crop + resize: the crops of a batch are padded into one tensor and resampled by two batched matrix
  products with torch's antialiased bicubic weights, in whole numbers (float64), rounded after each pass
  as torch's CPU uint8 resize does: the same bytes as the per-sample renderer's resize (checked in
  tests/views/test_batched.py);
- flip, colour jitter (each image's factors and order), grayscale and blur (each image's kernel): the
  operations of ``views/ops.py``, the per-sample renderer's own;
- crowd images: backgrounds rendered as views, each paste slot's persons rendered and resized to their
  boxes, then laid onto the canvases with one gather and an alpha blend.

So on one CPU the batched renderer gives the per-sample renderer's bytes; on CUDA it gives the same up to
the float maths of the colour ops (tests/views/test_batched.py states and checks the tolerance).

    renderer = BatchRenderer(device)
    views = renderer.views(sources, params)               # (B, 3, H, W) uint8 on the device
    crowds = renderer.crowds(recipes, images, backgrounds)  # (B, 3, Hc, Wc)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from dpal_cache.views import ops
from dpal_cache.views.crowd import CrowdRecipe
from dpal_cache.views.params import ViewParams
from dpal_cache.views.render import apply_params


def _crop(source: torch.Tensor, p: ViewParams) -> torch.Tensor:
    if tuple(source.shape[1:]) != p.img_size:
        raise ValueError(f"view was drawn for a {p.img_size} image, got {tuple(source.shape[1:])}")
    top, left, h, w = p.box
    return source[:, top:top + h, left:left + w]


class BatchRenderer:
    """Renders batches of views and crowd images on ``device`` (see the module docstring)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def views(self, sources: Sequence[torch.Tensor], params: Sequence[ViewParams | object]) -> torch.Tensor:
        """One view per source: uint8 (3, H, W) sources on the device, parameters (ViewParams or stored vectors)
        of one output size -> uint8 (B, 3, h, w)."""
        params = [p if isinstance(p, ViewParams) else ViewParams.from_vector(p) for p in params]
        sizes = {p.out_size for p in params}
        if len(sizes) != 1:
            raise ValueError(f"one batch of views has one output size, got {sorted(sizes)}")
        crops = [_crop(s, p) for s, p in zip(sources, params, strict=True)]
        resized = ops.resize_exact(crops, [p.out_size for p in params])
        return apply_params(torch.stack(resized), params)

    def crowds(self, recipes: Sequence[CrowdRecipe | object], images: Mapping[int, torch.Tensor],
               backgrounds: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Crowd images of ``recipes`` (CrowdRecipes or stored vectors) of one size: ``images`` maps every dataset
        index they use to its decoded uint8 (3, H, W) on the device, ``backgrounds`` every background-folder
        index -> uint8 (B, 3, Hc, Wc)."""
        recipes = [r if isinstance(r, CrowdRecipe) else CrowdRecipe.from_vector(r) for r in recipes]

        def background(r: CrowdRecipe) -> torch.Tensor:
            if r.background_kind == "folder":
                if backgrounds is None or r.background_index not in backgrounds:
                    raise ValueError(f"this recipe's background is background-folder image {r.background_index}")
                return backgrounds[r.background_index]
            return images[r.background_index]

        canvas = self.views([background(r) for r in recipes], [r.background_view for r in recipes])
        for slot in range(max(len(r.pastes) for r in recipes)):
            which = [b for b, r in enumerate(recipes) if slot < len(r.pastes)]
            pastes = [recipes[b].pastes[slot] for b in which]
            patches = self._paste_views([images[p.index] for p in pastes], [p.view for p in pastes])
            boxes = [p.box for p in pastes]
            resized = ops.resize_exact(patches, [(h, w) for _, _, h, w in boxes])
            canvas = _lay(canvas, which, resized, boxes, [p.alpha for p in pastes])
        return canvas

    def _paste_views(self, sources: list[torch.Tensor], params: list[ViewParams]) -> list[torch.Tensor]:
        """Views of many output sizes (each paste is rendered at its own), grouped by size."""
        out: list[torch.Tensor | None] = [None] * len(params)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(params):
            by_size.setdefault(p.out_size, []).append(i)
        for members in by_size.values():
            rendered = self.views([sources[i] for i in members], [params[i] for i in members])
            for i, view in zip(members, rendered):
                out[i] = view
        return out  # type: ignore[return-value]


def _lay(canvas: torch.Tensor, which: list[int], patches: list[torch.Tensor], boxes: list[tuple[int, int, int, int]],
         alphas: list[float]) -> torch.Tensor:
    """Lay each patch onto its canvas at its box, blended ``alpha`` / ``1 - alpha`` as ``crowd.render_crowd``
    does (rounded, clamped), every canvas of ``which`` in one gather."""
    device = canvas.device
    n, (height, width) = len(which), canvas.shape[-2:]
    hmax, wmax = max(p.shape[1] for p in patches), max(p.shape[2] for p in patches)
    padded = torch.zeros((n, 3, hmax, wmax), dtype=torch.uint8, device=device)
    for k, p in enumerate(patches):
        padded[k, :, :p.shape[1], :p.shape[2]] = p
    box = torch.tensor(boxes, device=device)  # (n, 4): top, left, height, width
    ys = torch.arange(height, device=device).view(1, height, 1) - box[:, 0].view(n, 1, 1)  # (n, H, 1)
    xs = torch.arange(width, device=device).view(1, 1, width) - box[:, 1].view(n, 1, 1)  # (n, 1, W)
    inside = (ys >= 0) & (ys < box[:, 2].view(n, 1, 1)) & (xs >= 0) & (xs < box[:, 3].view(n, 1, 1))  # (n, H, W)
    index = (ys.clamp(0, hmax - 1) * wmax + xs.clamp(0, wmax - 1)).view(n, 1, height * width).expand(n, 3, -1)
    placed = padded.view(n, 3, hmax * wmax).gather(2, index).view(n, 3, height, width)
    region = canvas[which]
    alpha = torch.tensor(alphas, dtype=torch.float32, device=device).view(n, 1, 1, 1)
    mixed = (placed.to(torch.float32) * alpha + region.to(torch.float32) * (1.0 - alpha)).round_().clamp_(0, 255)
    opaque = (alpha >= 1.0).expand_as(mixed)
    laid = torch.where(opaque, placed, mixed.to(torch.uint8))
    canvas = canvas.clone()
    canvas[which] = torch.where(inside.unsqueeze(1), laid, region)
    return canvas

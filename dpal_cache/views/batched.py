"""The one renderer: global views, local crops and crowd images of a batch, from their stored parameters, on
any device.

``BatchRenderer`` takes decoded sources (uint8 (3, H, W) tensors of any sizes, on its device: decoded there
by ``data.device_decode``, or sent there) and the parameter vectors, and has two ways to go through a batch,
one set of operations (``views/ops.py``; ``render.apply_params`` applies them in the release's order):

- view by view (the CPU's way, its default there): crop, torch's uint8 antialiased bicubic resize, then the
  operations on a batch of one; crowd pastes laid box by box. A view's planes stay in the CPU's cache, which
  on a CPU core is faster than whole-batch tensors (``dpal-cache bench --only render`` measures both). The
  per-sample functions ``render.render_view`` and ``crowd.render_crowd`` are this path for one image.
- whole batch (``whole_batch=True``; the default on CUDA): the crops are padded into one tensor and resampled
  by two batched matrix products of torch's antialiased bicubic weights in whole numbers (float64), rounded
  after each pass as torch's CPU uint8 kernel rounds (the same bytes: ``ops.resize_exact``); the operations
  run once per batch with a parameter per image; each paste slot of the crowds is laid onto every canvas
  with one gather.

Both ways give the same bytes on a CPU with torch's AVX2 uint8 resize; on CUDA the float maths of the colour
operations may round differently (at most 2 grey levels, at least 99.9 % of the values identical: the tolerance
tests/views/test_batched.py states and checks).

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
from dpal_cache.views.render import apply_params, crop, render_chw, resize


class BatchRenderer:
    """Renders batches of views and crowd images on ``device`` (see the module docstring)."""

    def __init__(self, device: torch.device | str = "cpu", whole_batch: bool | None = None):
        self.device = torch.device(device)
        # the accelerator strategy (whole batches, exact matrix-product resize, one gather per paste slot) or the
        # CPU one (view by view, torch's uint8 resize, box by box); by default the one made for the device
        self.whole_batch = self.device.type != "cpu" if whole_batch is None else bool(whole_batch)

    def views(self, sources: Sequence[torch.Tensor], params: Sequence[ViewParams | object]) -> torch.Tensor:
        """One view per source: uint8 (3, H, W) sources on the device, parameters (ViewParams or stored vectors)
        of one output size -> uint8 (B, 3, h, w)."""
        params = [p if isinstance(p, ViewParams) else ViewParams.from_vector(p) for p in params]
        sizes = {p.out_size for p in params}
        if len(sizes) != 1:
            raise ValueError(f"one batch of views has one output size, got {sorted(sizes)}")
        if not self.whole_batch:  # one view at a time: its planes stay in the CPU's cache (faster than batching)
            return torch.stack([render_chw(s, p) for s, p in zip(sources, params, strict=True)])
        crops = [crop(s, p) for s, p in zip(sources, params, strict=True)]
        return apply_params(torch.stack(ops.resize_exact(crops, [p.out_size for p in params])), params)

    def _resize(self, crops: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Antialiased bicubic resize: on the CPU torch's own uint8 kernel per crop (20x faster there than
        batched matrix products); elsewhere ``ops.resize_exact`` (the same bytes) on the whole batch."""
        if not self.whole_batch:
            return [resize(c.contiguous(), s) for c, s in zip(crops, sizes, strict=True)]
        return ops.resize_exact(crops, sizes)

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
            resized = self._resize(patches, [(h, w) for _, _, h, w in boxes])
            canvas = _lay(canvas, which, resized, boxes, [p.alpha for p in pastes], self.whole_batch)
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


def _mix(patch: torch.Tensor, region: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """A pasted patch over its region (uint8, same shape): ``round(patch * alpha + region * (1 - alpha))``, clamped,
    with float32 ``alpha`` (one per image, broadcast); the patch itself where alpha is 1."""
    mixed = (patch.to(torch.float32) * alpha + region.to(torch.float32) * (1.0 - alpha)).round_().clamp_(0, 255)
    return torch.where((alpha >= 1.0).expand_as(mixed), patch, mixed.to(torch.uint8))


def _lay(canvas: torch.Tensor, which: list[int], patches: list[torch.Tensor], boxes: list[tuple[int, int, int, int]],
         alphas: list[float], whole_batch: bool) -> torch.Tensor:
    """Lay each patch onto canvas ``which[k]`` at its box, blended by ``_mix``: box by box (only the pasted pixels
    are touched: the CPU's way), or with ``whole_batch`` every canvas of ``which`` in one gather."""
    device = canvas.device
    alpha = torch.tensor(alphas, dtype=torch.float32, device=device)
    canvas = canvas.clone()
    if not whole_batch:
        for k, (b, patch, (top, left, h, w)) in enumerate(zip(which, patches, boxes, strict=True)):
            region = canvas[b, :, top:top + h, left:left + w]
            region.copy_(patch if alphas[k] >= 1.0 else _mix(patch, region, alpha[k]))  # _mix's own rule at 1
        return canvas
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
    rows = torch.tensor(which, device=device)
    region = canvas.index_select(0, rows)
    laid = torch.where(inside.unsqueeze(1), _mix(placed, region, alpha.view(n, 1, 1, 1)), region)
    return canvas.index_copy_(0, rows, laid)

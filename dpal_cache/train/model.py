"""The trained module: student + pattern decoder, from a batch of inputs and targets to the losses.

It is what DDP wraps (one forward = every student and decoder call of a step). Inputs arrive
as uint8 and are normalised here, on the device.

    model = DistillModel(student, decoder, cfg.loss, cfg.decoder, view_grid=(16, 8), crowd_grid=(16, 16))
    out = model(batch, epoch)          # {'loss', 'global', 'local', 'relation', 'router_ce', 'expert_l2'}
    out["loss"].backward()
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from dpal_cache.normalization import IMAGENET_MEAN, IMAGENET_STD
from dpal_cache.train.decoders.config import DecoderConfig, Pattern, router_ce_weight
from dpal_cache.train.losses import LossConfig, TargetStats, compute_losses
from dpal_cache.train.students import Student


class DistillModel(nn.Module):
    """Student + decoder; ``forward(batch, epoch)`` returns the loss dict of compute_losses.

    Args:
        view_grid, crowd_grid: the teacher's patch grids of global views and crowd images.
        token_stats: (4, D) class mean/std, patch mean/std for target normalisation (store calibration).
        zeroed_background: the store zeroed background patch tokens (``mask_at_extract``): all-zero target rows
            get local-loss weight 0.
    """

    def __init__(self, student: Student, decoder: nn.Module, loss_cfg: LossConfig, decoder_cfg: DecoderConfig,
                 view_grid: tuple[int, int], crowd_grid: tuple[int, int], token_stats: torch.Tensor | None = None,
                 zeroed_background: bool = False):
        super().__init__()
        self.student = student
        self.decoder = decoder
        self.loss_cfg = loss_cfg
        self.decoder_cfg = decoder_cfg
        self.view_grid = tuple(view_grid)
        self.crowd_grid = tuple(crowd_grid)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        stats = token_stats if token_stats is not None else torch.zeros(4, 1)
        self.register_buffer("token_stats", stats.float(), persistent=False)
        self.zeroed_background = zeroed_background

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def forward(self, batch: dict[str, Any], epoch: int) -> dict[str, torch.Tensor]:
        cfg = self.loss_cfg
        views = self.student(self._normalise(batch["global_view"]), grid=self.view_grid)
        crops = batch["local_crops"]  # (B, K, 3, h, w)
        b, k = crops.shape[:2]
        glob = [views["global"]]
        if k and cfg.global_weight > 0:
            crop_out = self.student(self._normalise(crops.flatten(0, 1)))
            glob += list(crop_out["global"].view(b, k, -1).unbind(1))
        aux, calls = [], []  # calls: how many of the release's decoder calls each of ours stands for
        global_preds = []
        if cfg.global_weight > 0:
            # every view's class token is its own one-token sequence: views never attend to each other
            g = torch.stack(glob, dim=1).flatten(0, 1)[:, None]  # (B * (1 + K), 1, Ds)
            res = self.decoder(g, Pattern.GLOBAL)
            aux.append(res.aux)
            calls.append(len(glob))  # the release decodes the global view and each crop in a call of its own
            global_preds = list(res.out[:, 0].view(b, len(glob), -1).unbind(1))  # (1 + K) x (B, Dt)
        local_pred = None
        if cfg.local_weight > 0:
            res = self.decoder(views["patches"], Pattern.LOCAL)  # (B, L, Dt)
            aux.append(res.aux)
            calls.append(1)
            local_pred = res.out
        relation_tokens = None
        if cfg.relation_weight > 0:
            crowd = self.student(self._normalise(batch["crowd"]), grid=self.crowd_grid)
            tokens = crowd["patches"]  # (B, Lc, Ds)
            if cfg.relation == "gram":
                tokens = torch.cat([crowd["global"][:, None], tokens], dim=1)  # (B, 1 + Lc, Ds)
            res = self.decoder(tokens, Pattern.RELATION)
            aux.append(res.aux)
            calls.append(1)
            relation_tokens = res.out
        t_tokens = batch["t_tokens"]  # (B, 1 + L, Dt)
        stats = self.token_stats
        return compute_losses(
            cfg,
            global_preds=global_preds,
            global_target=t_tokens[:, 0],
            local_pred=local_pred,
            local_target=t_tokens[:, 1:],
            pca_score=batch["t_mask_score"],
            attn_cls=batch["t_attn_cls"],
            relation_tokens=relation_tokens,
            relation_target=batch["t_relation"],
            aux=aux,
            aux_calls=calls,
            keep_tokens=t_tokens[:, 1:].ne(0).any(dim=-1) if self.zeroed_background else None,
            router_ce_weight=router_ce_weight(self.decoder_cfg, epoch),
            expert_l2_weight=self.decoder_cfg.expert_l2_weight,
            global_stats=TargetStats(stats[0], stats[1]) if cfg.normalize_targets else None,
            local_stats=TargetStats(stats[2], stats[3]) if cfg.normalize_targets else None,
        )

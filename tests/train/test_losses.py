"""Losses against hand-computed small cases; masks, relation kinds and their errors; compute_losses."""

from __future__ import annotations

import math

import pytest
import torch

from dpal_cache.config import ConfigError
from dpal_cache.train.losses import (
    LossConfig,
    TargetStats,
    compute_losses,
    global_loss,
    local_loss,
    make_mask,
    normalize_targets,
    relation_loss,
)


def gram(tokens: torch.Tensor) -> torch.Tensor:
    return torch.softmax(tokens @ tokens.transpose(1, 2) / math.sqrt(tokens.shape[-1]), dim=-1)


def test_global_loss_is_the_view_mean_of_mse():
    target = torch.tensor([[1.0, 2.0]])
    views = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 2.0]]), torch.tensor([[[0.0, 0.0]]])]  # (B, 1, Dt) too
    # per view: 0, (4 + 0) / 2 = 2, (1 + 4) / 2 = 2.5
    assert global_loss(views, target).item() == pytest.approx((0 + 2 + 2.5) / 3)
    with pytest.raises(ValueError, match="shape"):
        global_loss([torch.zeros(1, 3)], target)


def test_masks_hard_soft_attention_and_none():
    pca = torch.tensor([[0.2, 0.5, 0.9]])
    assert make_mask("pca", pca, threshold=0.5, soft=False).tolist() == [[0.0, 1.0, 1.0]]
    assert torch.allclose(make_mask("pca", pca, threshold=0.5, soft=True), torch.tensor([[0.0, 0.5, 0.9]]))
    assert torch.allclose(make_mask("pca", pca, threshold=0.0, soft=True), pca)  # the release's soft mask
    attn = torch.tensor([[0.1, 0.2, 0.7]])  # sums to 1; divided by its max 0.7
    assert torch.allclose(make_mask("attention", attn_cls=attn, threshold=0.0), torch.tensor([[1 / 7, 2 / 7, 1.0]]))
    assert make_mask("attention", attn_cls=attn, threshold=0.25, soft=False).tolist() == [[0.0, 1.0, 1.0]]
    assert make_mask("none", pca).tolist() == [[1.0, 1.0, 1.0]]
    assert make_mask("none", shape=(2, 4)).shape == (2, 4)
    with pytest.raises(ValueError, match="needs the teacher's attn_cls"):
        make_mask("attention", pca_score=pca)
    with pytest.raises(ValueError, match="needs the store's pca score"):
        make_mask("pca", attn_cls=attn)


def test_local_loss_normalisations():
    pred = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])  # (B=1, L=2, Dt=2)
    target = torch.zeros(1, 2, 2)  # squared errors: token 0 -> 1, 1; token 1 -> 4, 0
    assert local_loss(pred, target).item() == pytest.approx(6 / 4)
    hard = torch.tensor([[1.0, 0.0]])
    assert local_loss(pred, target, hard, "release").item() == pytest.approx(2 / 4)  # background still counts
    assert local_loss(pred, target, hard, "mask").item() == pytest.approx(2 / 2)  # mean over the foreground
    soft = torch.tensor([[0.5, 1.0]])
    # release: MSE(M * pred, M * target) weighs by M^2; mask: weighs by M, divided by sum(M) * Dt
    assert local_loss(pred, target, soft, "release").item() == pytest.approx((0.25 * 2 + 1.0 * 4) / 4)
    assert local_loss(pred, target, soft, "mask").item() == pytest.approx((0.5 * 2 + 1.0 * 4) / (1.5 * 2))
    assert local_loss(pred, target, torch.zeros(1, 2), "mask").item() == 0.0
    with pytest.raises(ValueError, match="does not match"):
        local_loss(pred, target, torch.ones(1, 3))


def test_relation_kl_is_zero_for_identical_maps_and_matches_a_hand_case():
    torch.manual_seed(0)
    tokens = torch.randn(2, 5, 8)  # class token first, then 4 patch tokens
    assert relation_loss(tokens, gram(tokens), "gram").abs().item() < 1e-6
    assert relation_loss(tokens[:, 1:], gram(tokens[:, 1:]), "attention").abs().item() < 1e-6
    assert relation_loss(tokens, gram(tokens[:, 1:]), "attention").abs().item() < 1e-6  # class token dropped
    # hand case: two orthogonal unit tokens, Dt = 2 -> student rows softmax([1, 0] / sqrt 2)
    g = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    s = torch.softmax(torch.tensor([1.0, 0.0]) / math.sqrt(2), dim=0).tolist()
    t = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])
    expected = 0.5 * math.log(0.5 / s[0]) + 0.5 * math.log(0.5 / s[1])  # same for both rows
    assert relation_loss(g, t, "attention").item() == pytest.approx(expected, rel=1e-5)
    onehot = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # zeros in the target contribute nothing
    assert relation_loss(g, onehot, "attention").item() == pytest.approx(-math.log(s[0]), rel=1e-5)


def test_relation_shape_errors_are_clear():
    tokens = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="'gram' target is 6x6 .* gives 5 tokens .* class token first"):
        relation_loss(tokens, torch.rand(2, 6, 6), "gram")
    with pytest.raises(ValueError, match="'attention' target is 3x3 patch tokens but the student gives 5"):
        relation_loss(tokens, torch.rand(2, 3, 3), "attention")
    with pytest.raises(ValueError, match="square map"):
        relation_loss(tokens, torch.rand(2, 4, 5), "attention")
    with pytest.raises(ValueError, match="batch"):
        relation_loss(tokens, torch.rand(3, 4, 4), "attention")
    with pytest.raises(ValueError, match="unknown relation kind"):
        relation_loss(tokens, torch.rand(2, 5, 5), "cosine")


def test_normalize_targets():
    x = torch.tensor([[2.0, 4.0]])
    out = normalize_targets(x, torch.tensor([1.0, 2.0]), torch.tensor([0.5, 2.0]))
    assert out.tolist() == [[2.0, 1.0]]


def test_compute_losses_weights_skips_and_aux():
    torch.manual_seed(1)
    B, L, Dt = 2, 4, 6
    g_t, p_t = torch.randn(B, Dt), torch.randn(B, L, Dt)
    views = [torch.randn(B, Dt) for _ in range(3)]
    patches, crowd = torch.randn(B, L, Dt), torch.randn(B, L, Dt)
    rel_t = torch.rand(B, L, L).softmax(-1)
    pca = torch.rand(B, L)
    aux = [{"router_ce": torch.tensor(1.0), "expert_l2": torch.tensor(2.0)},
           {"router_ce": torch.tensor(3.0), "expert_l2": torch.tensor(4.0)}]
    cfg = LossConfig(global_weight=1.0, local_weight=0.5, relation_weight=2.0, mask="pca", mask_threshold=0.3)
    out = compute_losses(cfg, global_preds=views, global_target=g_t, local_pred=patches, local_target=p_t,
                         pca_score=pca, relation_tokens=crowd, relation_target=rel_t, aux=aux,
                         router_ce_weight=0.1, expert_l2_weight=0.025)
    assert list(out) == ["loss", "global", "local", "relation", "router_ce", "expert_l2"]
    assert out["global"].item() == pytest.approx(global_loss(views, g_t).item())
    mask = make_mask("pca", pca, threshold=0.3, soft=True)
    assert out["local"].item() == pytest.approx(local_loss(patches, p_t, mask).item())
    assert out["relation"].item() == pytest.approx(relation_loss(crowd, rel_t).item())
    assert out["router_ce"].item() == 2.0 and out["expert_l2"].item() == 3.0  # means over decoder calls
    expected = out["global"] + 0.5 * out["local"] + 2.0 * out["relation"] + 0.1 * 2.0 + 0.025 * 3.0
    assert out["loss"].item() == pytest.approx(expected.item())

    only_global = compute_losses(LossConfig(local_weight=0, relation_weight=0), global_preds=views, global_target=g_t)
    assert only_global["local"] == 0 and only_global["relation"] == 0
    assert only_global["loss"].item() == pytest.approx(only_global["global"].item())

    with pytest.raises(ValueError, match="relation loss has a non-zero weight but no teacher relation map"):
        compute_losses(LossConfig(local_weight=0), global_preds=views, global_target=g_t, relation_tokens=crowd)
    with pytest.raises(ValueError, match="statistics"):
        compute_losses(LossConfig(local_weight=0, relation_weight=0, normalize_targets=True),
                       global_preds=views, global_target=g_t)
    stats = TargetStats(torch.full((Dt,), 0.5), torch.full((Dt,), 2.0))
    normed = compute_losses(LossConfig(local_weight=0, relation_weight=0, normalize_targets=True),
                            global_preds=views, global_target=g_t, global_stats=stats)
    assert normed["global"].item() == pytest.approx(global_loss(views, (g_t - 0.5) / 2.0).item())


def test_loss_backpropagates_and_config_checks():
    pred = torch.randn(2, 3, 4, requires_grad=True)
    out = compute_losses(LossConfig(global_weight=0, relation_weight=0, mask="none"),
                         local_pred=pred, local_target=torch.zeros(2, 3, 4))
    out["loss"].backward()
    assert pred.grad is not None
    with pytest.raises(ConfigError, match="mask_threshold"):
        LossConfig(mask_threshold=1.5)
    with pytest.raises(ConfigError, match="local_weight"):
        LossConfig(local_weight=-1.0)


def test_tokens_zeroed_at_extraction_get_no_local_weight():
    # mask_at_extract zeroes background target rows: whatever the mask (soft PCA, none, normalised targets), the
    # student is not trained towards them
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 6, 8, generator=gen), torch.randn(2, 6, 8, generator=gen)
    keep = torch.tensor([[True, True, False, True, False, True], [False, True, True, True, True, False]])
    target = target * keep[..., None]  # the store's zeroed rows
    score = torch.rand(2, 6, generator=gen)
    stats = TargetStats(torch.randn(8, generator=gen), torch.rand(8, generator=gen) + 0.5)
    for cfg in (LossConfig(global_weight=0, relation_weight=0),
                LossConfig(global_weight=0, relation_weight=0, mask="none"),
                LossConfig(global_weight=0, relation_weight=0, normalize_targets=True, local_norm="mask")):
        args = dict(local_target=target, pca_score=score, keep_tokens=keep, local_stats=stats)
        base = compute_losses(cfg, local_pred=pred, **args)["local"]
        moved = pred.clone()
        moved[~keep] += 5.0  # predictions on zeroed rows do not matter
        assert torch.allclose(compute_losses(cfg, local_pred=moved, **args)["local"], base)
        pred_kept = pred.clone()
        pred_kept[keep] += 5.0  # on kept rows they do
        assert not torch.allclose(compute_losses(cfg, local_pred=pred_kept, **args)["local"], base)


def test_auxiliary_losses_average_over_the_releases_decoder_calls():
    aux = [{"router_ce": torch.tensor(3.0), "expert_l2": torch.tensor(1.0)},  # global view + 2 crops: 3 calls
           {"router_ce": torch.tensor(1.0), "expert_l2": torch.tensor(2.0)},
           {"router_ce": torch.tensor(2.0), "expert_l2": torch.tensor(4.0)}]
    target = torch.zeros(2, 4)
    kwargs = dict(global_preds=[target], global_target=target, aux=aux, aux_calls=[3, 1, 1])
    calls = compute_losses(LossConfig(local_weight=0, relation_weight=0), **kwargs)
    assert math.isclose(float(calls["router_ce"]), (3 * 3.0 + 1.0 + 2.0) / 5, rel_tol=1e-6)  # release: / num_aux
    assert math.isclose(float(calls["expert_l2"]), (3 * 1.0 + 2.0 + 4.0) / 5, rel_tol=1e-6)
    patterns = compute_losses(LossConfig(local_weight=0, relation_weight=0, aux_average="patterns"), **kwargs)
    assert math.isclose(float(patterns["router_ce"]), 2.0, rel_tol=1e-6)
    assert math.isclose(float(patterns["expert_l2"]), 7 / 3, rel_tol=1e-6)

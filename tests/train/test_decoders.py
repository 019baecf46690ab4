"""Pattern decoders: shapes and aux outputs, D-PaDe against a reference recomputation, router supervision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dpal_cache.config import ConfigError
from dpal_cache.train.decoders import DECODERS, DecoderConfig, Pattern, build_decoder, resolve_heads, router_ce_weight
from dpal_cache.train.decoders.dpade import DPaDe

DS, DT = 32, 48  # small student / teacher widths



def assert_close(ours: torch.Tensor, ref: torch.Tensor, name: str, max_tol: float = 1e-5, mean_tol: float = 1e-6):
    """Compare with a reference, reporting max and mean absolute differences."""
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    diff = (ours.double() - ref.double()).abs()
    max_diff, mean_diff = diff.max().item(), diff.mean().item()
    assert max_diff <= max_tol and mean_diff <= mean_tol, f"{name}: max diff {max_diff:.3g}, mean diff {mean_diff:.3g}"


def mha(attn: torch.nn.MultiheadAttention, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """nn.MultiheadAttention written out: (B, Q, D) queries over (B, K, D) keys/values."""
    D, h = q.shape[-1], attn.num_heads
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3)

    def heads(t):  # (B, N, D) -> (B, h, N, D / h)
        return t.reshape(t.shape[0], t.shape[1], h, D // h).transpose(1, 2)

    qh, kh, vh = heads(q @ wq.T + bq), heads(kv @ wk.T + bk), heads(kv @ wv.T + bv)
    att = (qh @ kh.transpose(-1, -2) / math.sqrt(D // h)).softmax(-1)
    out = (att @ vh).transpose(1, 2).reshape(q.shape)
    return attn.out_proj(out)


def dpade_reference(dec: DPaDe, x: torch.Tensor, pattern: int):
    """D-PaDe's math recomputed step by step from its parameters (attention blocks reused where timm's)."""
    x = dec.mixer.down(x)
    y = dec.mixer.norm(x + dec.mixer.attn(x))
    r = dec.router
    token = F.layer_norm(r.token, (x.shape[-1],), r.norm.weight, r.norm.bias, r.norm.eps).expand(x.shape[0], -1, -1)
    logits = mha(r.attn, token, y)[:, 0] @ r.head.weight.T  # (B, 3)
    scores = logits.softmax(-1)
    ce = -logits.log_softmax(-1)[:, pattern].mean()
    g = dec.generator
    q = g.queries.expand(x.shape[0], -1, -1)
    q = q + g.self_attn(q)
    q = q + mha(g.cross_attn, g.norm_cross(q), x)
    lin, ln = g.ffn[0], g.ffn[2]
    params = F.layer_norm(F.gelu(g.norm_ffn(q) @ lin.weight.T + lin.bias), ln.normalized_shape, ln.weight, ln.bias,
                          ln.eps)
    B, D, Dt = x.shape[0], x.shape[-1], dec.teacher_dim
    if g.rank is None:
        experts = params.reshape(B, 3, D, Dt)
    else:
        u = params[..., : D * g.rank].reshape(B, 3, D, g.rank)
        v = params[..., D * g.rank :].reshape(B, 3, g.rank, Dt)
        experts = torch.stack([u[:, e] @ v[:, e] for e in range(3)], 1) / math.sqrt(g.rank)
    weight = sum(scores[:, e, None, None] * experts[:, e] for e in range(3)) / dec.expert_scale  # (B, D, Dt)
    out = F.layer_norm(F.gelu(torch.bmm(y, weight)), (Dt,), dec.out_norm.weight, dec.out_norm.bias, dec.out_norm.eps)
    return out, scores, ce, (weight**2).sum(dim=(1, 2)).mean()


@pytest.mark.parametrize("kind", list(DECODERS))
def test_shapes_and_aux_for_every_kind_and_pattern(kind):
    torch.manual_seed(0)
    dec = build_decoder(kind, DS, DT, DecoderConfig(kind=kind))
    for pattern, L in zip(Pattern, (1, 8, 12)):
        res = dec(torch.randn(3, L, DS), pattern)
        assert res.out.shape == (3, L, DT)
        assert set(res.aux) == {"router_ce", "expert_l2"}
        assert all(v.shape == () and torch.isfinite(v) for v in res.aux.values())
        if kind in ("dpade", "moe"):
            assert res.scores.shape == (3, 3) and torch.allclose(res.scores.sum(-1), torch.ones(3))
            assert res.aux["router_ce"] > 0
        else:
            assert res.scores is None and res.aux["router_ce"] == 0
        assert (res.aux["expert_l2"] > 0) == (kind == "dpade")


@pytest.mark.parametrize(
    "cfg",
    [DecoderConfig(), DecoderConfig(inner_dim=16), DecoderConfig(low_rank=4), DecoderConfig(expert_scale=8.0)],
    ids=["full", "inner_dim", "low_rank", "scale8"],
)
def test_dpade_matches_reference_recomputation(cfg):
    torch.manual_seed(1)
    dec = DPaDe(DS, DT, cfg).eval()
    with torch.no_grad():  # the zero-initialised queries make every expert equal: perturb them
        dec.generator.queries.normal_()
    x = torch.randn(4, 10, DS)
    for pattern in Pattern:
        with torch.no_grad():
            res = dec(x, pattern)
            out, scores, ce, l2 = dpade_reference(dec, x, pattern)
        assert_close(res.scores, scores, "scores", 1e-6, 1e-7)
        assert_close(res.out, out, "out", 1e-4, 1e-5)
        assert_close(res.aux["router_ce"], ce, "router_ce", 1e-6, 1e-6)
        assert_close(res.aux["expert_l2"], l2, "expert_l2", 1e-5 * l2.item(), 1e-5 * l2.item())


def test_expert_scale_divides_the_mixed_matrix():
    torch.manual_seed(2)
    experts, scores = torch.randn(2, 3, DS, DT), torch.rand(2, 3).softmax(-1)
    a = DPaDe(DS, DT, DecoderConfig(expert_scale=256.0)).mix_experts(experts, scores)
    b = DPaDe(DS, DT, DecoderConfig(expert_scale=64.0)).mix_experts(experts, scores)
    assert_close(4 * a, b, "scale", 1e-6, 1e-7)
    assert_close(a, torch.einsum("be,bedt->bdt", scores, experts) / 256, "mix", 1e-6, 1e-7)


@pytest.mark.parametrize("kind", ["dpade", "moe"])
def test_router_ce_drives_each_pattern_to_its_expert(kind):
    """A few dozen Adam steps on router CE alone route fresh inputs of each pattern to that pattern's expert.
    Inputs differ per pattern in length and in their mean token, as class tokens, view patches and crowd
    patches do (a mean shared by all channels would be removed by the LayerNorms). Robust over 20 seeds."""
    torch.manual_seed(3)
    dec = build_decoder(kind, DS, DT)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    lengths, centres = (1, 8, 16), torch.randn(3, DS)

    def batch(pattern, n=8):
        return torch.randn(n, lengths[pattern], DS) + centres[pattern]

    for _ in range(40):
        loss = sum(dec(batch(p), p).aux["router_ce"] for p in Pattern)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for p in Pattern:
            routed = dec(batch(p, 64), p).scores.argmax(-1)
            assert (routed == p).all(), f"pattern {p.name}: routed to {routed.tolist()}"


def test_every_dpade_parameter_gets_a_gradient():
    """No unused parameters (DDP without find_unused_parameters). At init the pattern queries are zero,
    so the query self-attention weights and the cross-attention norm's scale get exactly zero gradients
    (as in the release) until the first step moves the queries; with moved queries all are non-zero."""
    dec = DPaDe(DS, DT, DecoderConfig(inner_dim=24))

    def grads():
        dec.zero_grad(set_to_none=True)
        res = dec(torch.randn(2, 5, DS), Pattern.LOCAL)
        (res.out.square().mean() + res.aux["router_ce"] + res.aux["expert_l2"]).backward()
        return {n: p.grad for n, p in dec.named_parameters()}

    at_init = grads()
    assert all(g is not None for g in at_init.values())
    zero_at_init = sorted(n for n, g in at_init.items() if not g.abs().sum() > 0)
    assert zero_at_init == ["generator.norm_cross.weight", "generator.self_attn.proj.weight",
                            "generator.self_attn.qkv.weight"]
    assert at_init["generator.queries"].abs().sum() > 0
    with torch.no_grad():
        dec.generator.queries.normal_()
    missing = [n for n, g in grads().items() if not g.abs().sum() > 0]
    assert not missing, missing


def test_low_rank_has_far_fewer_parameters():
    def count(cfg):
        return sum(p.numel() for p in DPaDe(DS, 4 * DS, cfg).parameters())

    full, low = count(DecoderConfig()), count(DecoderConfig(low_rank=4))
    assert low < full / 3


def test_router_ce_schedule_and_head_rule():
    cfg = DecoderConfig()
    assert [router_ce_weight(cfg, e) for e in (0, 19, 20, 150)] == [0.1, 0.1, 0.01, 0.01]
    assert cfg.expert_l2_weight == 0.025 and cfg.expert_scale == 256.0
    assert resolve_heads(192, 16) == 16 and resolve_heads(192, 12) == 12 and resolve_heads(768, 12) == 12
    assert resolve_heads(32, 16) == 4 and resolve_heads(48, 12) == 6 and resolve_heads(100, 16) == 10
    assert resolve_heads(8, 16) == 1 and resolve_heads(7, 16) == 1


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ConfigError, match="low_rank"):
        DecoderConfig(kind="linear", low_rank=4)
    with pytest.raises(ConfigError, match="expert_scale"):
        DecoderConfig(expert_scale=0.0)
    with pytest.raises(ValueError, match="unknown decoder kind"):
        build_decoder("transformer", DS, DT)
    with pytest.raises(ValueError, match="pattern must be one of"):
        build_decoder("linear", DS, DT)(torch.randn(1, 2, DS), 3)
    assert isinstance(build_decoder(None, DS, DT, DecoderConfig(kind="mae")), DECODERS["mae"])

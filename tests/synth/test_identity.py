"""Identities: deterministic per (seed, id), varied across ids, attributes consistent with appearance."""

from __future__ import annotations

import numpy as np

from dpal_cache.synth.identity import (
    ATTRIBUTE_NAMES,
    LOWER_COLOURS,
    PALETTE,
    UPPER_COLOURS,
    draw_identity,
    identity_for,
)


def test_identity_is_a_pure_function_of_seed_and_id():
    assert identity_for(0, 7) == identity_for(0, 7)
    assert identity_for(0, 7) != identity_for(1, 7)
    assert identity_for(0, 7).person_id == 7


def test_identities_differ_across_ids():
    people = [identity_for(0, pid) for pid in range(1, 61)]
    looks = {(p.upper_colour, p.upper_texture, p.lower_colour, p.shorts, p.hat, p.bag, p.long_hair) for p in people}
    assert len(looks) >= 50  # near-unique coarse appearance; shades separate the rest
    assert len({p.upper_rgb + p.lower_rgb + p.skin_rgb for p in people}) == 60


def test_attributes_are_ordered_one_hot_and_match_the_identity():
    for pid in range(1, 40):
        ident = identity_for(3, pid)
        attrs = ident.attributes()
        assert tuple(attrs) == ATTRIBUTE_NAMES
        assert all(isinstance(v, bool) for v in attrs.values())
        assert sum(attrs[f"upper_{c}"] for c in UPPER_COLOURS) == 1
        assert sum(attrs[f"lower_{c}"] for c in LOWER_COLOURS) == 1
        assert attrs[f"upper_{ident.upper_colour}"] and attrs[f"lower_{ident.lower_colour}"]
        assert attrs["upper_pattern"] == (ident.upper_texture != "plain")
        assert attrs["bag"] == (attrs["backpack"] or attrs["handbag"])
        assert not (attrs["backpack"] and attrs["handbag"])
        for name in ("short_sleeves", "shorts", "long_hair", "hat", "broad_build"):
            assert attrs[name] == getattr(ident, name)


def test_colours_stay_close_to_their_name():
    for pid in range(1, 100):
        ident = identity_for(0, pid)
        assert np.abs(np.subtract(ident.upper_rgb, PALETTE[ident.upper_colour])).max() <= 14
        assert np.abs(np.subtract(ident.lower_rgb, PALETTE[ident.lower_colour])).max() <= 14


def test_every_attribute_occurs_both_ways():
    table = np.array([list(draw_identity(np.random.default_rng([9, i])).attributes().values()) for i in range(400)])
    rates = table.mean(axis=0)
    assert (rates > 0.0).all() and (rates < 1.0).all(), dict(zip(ATTRIBUTE_NAMES, rates))
    binary = [ATTRIBUTE_NAMES.index(n) for n in ("upper_pattern", "short_sleeves", "hat", "bag", "broad_build")]
    assert ((rates[binary] > 0.1) & (rates[binary] < 0.9)).all()

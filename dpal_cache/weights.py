"""How two state dicts differ, by key and shape: the one listing behind every strict-load refusal.

    parts = state_dict_differences(want={k: tuple(v.shape) ...}, got={k: tuple(v.shape) ...})
    # ["missing keys (1): norm.bias", "other shapes (1): pos_embed (1, 3, 192) (expected (1, 17, 192))"]
"""

from __future__ import annotations

Shape = tuple[int, ...]


def state_dict_differences(want: dict[str, Shape], got: dict[str, Shape], limit: int = 6) -> list[str]:
    """``missing keys (n): ...``, ``unexpected keys (n): ...``, ``other shapes (n): ...`` (only the non-empty ones).

    Args:
        want: key -> shape of the model the weights are for.
        got: key -> shape of the weights.
        limit: at most this many entries per part are named; the rest are counted.

    Returns:
        The parts, empty when the keys and shapes agree.
    """
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    shapes = [f"{k} {got[k]} (expected {want[k]})" for k in sorted(set(want) & set(got)) if want[k] != got[k]]
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("other shapes", shapes)):
        if items:
            more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"{title} ({len(items)}): {', '.join(items[:limit])}{more}")
    return parts

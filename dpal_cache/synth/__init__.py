"""Deterministic procedural pedestrian images in the Market-1501 layout (``dpal-cache synth``).

Each identity has a fixed appearance (identity.py), each photo a random pose, camera scene and
lighting (draw.py, scene.py); market.py writes the splits, LIP part masks and an attribute table.
"""

from dpal_cache.synth.config import SynthConfig
from dpal_cache.synth.market import SynthSummary, synthesize

__all__ = ["SynthConfig", "SynthSummary", "synthesize"]

"""Test-wide settings: one torch thread per test process.

CI runs two xdist workers on two cores; torch's default of one thread per core would put four
busy threads on two cores and slow the small-model tests many times over.
"""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    """A tiny synthetic Market-1501 folder (6 ids x 4 images of 64x32, 2 distractors, masks, attributes)."""
    from dpal_cache.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("market")
    synthesize(out, SynthConfig(ids=6, images_per_id=4, height=64, width=32, distractors=2, workers=1))
    return out

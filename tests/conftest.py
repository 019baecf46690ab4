"""Test-wide settings: one torch thread per test process.

CI runs two xdist workers on two cores; torch's default of one thread per core would put four
busy threads on two cores and slow the small-model tests many times over.
"""

import torch

torch.set_num_threads(1)

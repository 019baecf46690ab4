"""The training order: every usable image once per epoch, shard by shard, the same for any number of workers.

Each epoch shuffles the order of the store's blocks (one shard file per array each) and the images inside
windows of ``window`` consecutive blocks of that order, the way large-scale loaders shuffle shards and
then samples within a buffer: at any time reads touch the ``window`` shard files of one window, while a
window of 64 blocks of 256 images mixes 16k images. ``window=0`` draws one random order over all images
(small stores). The order is a pure function of (seed, epoch): the sampler runs in the training process,
so it is the same for any number of DataLoader workers, and a resume continues it at its batch.

Under torchrun the epoch is cut into global batches of ``world * batch_size`` consecutive images; rank
``r`` takes its ``batch_size`` of each. The images that do not fill a last global batch are not dropped:
with at least one per rank they form a shorter last batch on every rank, with fewer they join the last
full batches (one each), so every rank runs the same number of steps and every image trains once.

    sampler = EpochSampler(groups, batch_size=256, end_epoch=100, seed=0, window=64)
    for keys in sampler: ...     # keys = epoch * n + k: sample k (an index into the usable images)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from dpal_cache.streams import STREAM_EPOCH_CROWD, STREAM_EPOCH_ORDER, STREAM_EPOCH_VIEW  # noqa: F401 (re-exported)


def _rng(seed: int, epoch: int, part: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, STREAM_EPOCH_ORDER, epoch, part])))


def epoch_order(groups: np.ndarray, seed: int, epoch: int, window: int) -> np.ndarray:
    """The samples (0..n-1) in their order for ``epoch``: blocks shuffled, samples shuffled inside windows of
    ``window`` blocks (``groups[k]``: the block of sample k); ``window <= 0``: one permutation of all."""
    n = len(groups)
    blocks = np.unique(groups)
    if window <= 0 or len(blocks) <= window:
        return _rng(seed, epoch, 0).permutation(n)
    blocks = _rng(seed, epoch, 0).permutation(blocks)
    by_block = np.argsort(groups, kind="stable")  # samples grouped by block, each group in sample order
    starts = np.searchsorted(groups[by_block], blocks)
    ends = np.searchsorted(groups[by_block], blocks, side="right")
    order = []
    for w in range(0, len(blocks), window):
        members = np.concatenate([by_block[s:e] for s, e in zip(starts[w:w + window], ends[w:w + window])])
        order.append(_rng(seed, epoch, 1 + w // window).permutation(members))
    return np.concatenate(order)


def rank_batches(n: int, batch_size: int, world: int) -> list[list[tuple[slice, ...]]]:
    """For each rank, its batches as the slices of an epoch's order they gather (see the module docstring)."""
    per_round = world * batch_size
    full, left = divmod(n, per_round)
    if full == 0 and left < world:
        raise ValueError(f"{n} samples cannot give each of {world} rank(s) one sample")
    batches = [[(slice(i * per_round + r * batch_size, i * per_round + (r + 1) * batch_size),) for i in range(full)]
               for r in range(world)]
    base = full * per_round
    if left >= world:  # a shorter last batch on every rank: the rest split as evenly as it goes
        cuts = base + np.linspace(0, left, world + 1).round().astype(int)
        for r in range(world):
            batches[r].append((slice(int(cuts[r]), int(cuts[r + 1])),))
    else:  # fewer than one per rank: one more sample in the last batch of the first `left` ranks
        for r in range(left):
            batches[r][-1] += (slice(base + r, base + r + 1),)
    return batches


class EpochSampler(Sampler[list[int]]):
    """Batches of ``epoch * n + k`` keys for epochs ``start_epoch .. end_epoch - 1``; see the module docstring.

    Args:
        groups: the block of each sample (``n = len(groups)``); samples of one block are read from one shard.
        window: blocks shuffled together (0: one random order over all samples).
        shuffle: False keeps sample order (tests, evaluation).
        start_batch: skip the first batches of ``start_epoch`` (exact resume mid-epoch).

    One sampler spans the whole run, so one DataLoader (and one set of workers) serves every epoch.
    """

    def __init__(self, groups, batch_size: int, end_epoch: int, seed: int = 0, rank: int = 0, world: int = 1,
                 window: int = 0, shuffle: bool = True, start_epoch: int = 0, start_batch: int = 0):
        self.groups = np.asarray(groups, dtype=np.int64)
        self.n, self.batch_size, self.end_epoch, self.seed = len(self.groups), batch_size, end_epoch, seed
        self.rank, self.world, self.window, self.shuffle = rank, world, window, shuffle
        self.start_epoch, self.start_batch = start_epoch, start_batch
        self._slices = rank_batches(self.n, batch_size, world)[rank]

    def order(self, epoch: int) -> np.ndarray:
        """Every sample of ``epoch`` once, in training order (before the split over ranks)."""
        if not self.shuffle:
            return np.arange(self.n)
        return epoch_order(self.groups, self.seed, epoch, self.window)

    def batches_per_epoch(self) -> int:
        return len(self._slices)

    def __len__(self) -> int:
        return max(0, (self.end_epoch - self.start_epoch) * self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        for epoch in range(self.start_epoch, self.end_epoch):
            order = self.order(epoch)
            first = self.start_batch if epoch == self.start_epoch else 0
            for parts in self._slices[first:]:
                yield [int(epoch * self.n + k) for part in parts for k in order[part]]

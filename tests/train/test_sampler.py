"""The training order: every usable image once per epoch, shard windows, the same for any number of DataLoader
workers and after a resume at any batch; ranks disjoint and together complete."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from dpal_cache.train.sampler import EpochSampler, epoch_order, rank_batches

# 7 blocks of 8 images with a few images missing (not cached), as a store's usable images would group
GROUPS = np.concatenate([np.full(8 - (b % 3), b) for b in range(7)])
N = len(GROUPS)


def keys_by_epoch(batches: list[list[int]], n: int) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for batch in batches:
        for key in batch:
            out.setdefault(key // n, []).append(key % n)
    return out


@pytest.mark.parametrize("window", [0, 1, 3, 100])
def test_every_sample_once_per_epoch(window):
    sampler = EpochSampler(GROUPS, batch_size=5, end_epoch=3, seed=2, window=window)
    batches = list(sampler)
    per_epoch = sampler.batches_per_epoch()
    assert len(batches) == 3 * per_epoch and per_epoch == -(-N // 5)
    assert [len(b) for b in batches[:per_epoch]] == [5] * (N // 5) + ([N % 5] if N % 5 else [])  # the rest too
    for epoch, keys in keys_by_epoch(batches, N).items():
        assert sorted(keys) == list(range(N)), epoch  # nothing lost, nothing twice


def test_windows_hold_their_blocks_together():
    order = epoch_order(GROUPS, seed=0, epoch=0, window=2)
    blocks = GROUPS[order]
    # consecutive windows of the order cover disjoint pairs of blocks
    first_seen = list(dict.fromkeys(blocks.tolist()))
    for w in range(0, len(first_seen), 2):
        members = set(first_seen[w:w + 2])
        where = np.flatnonzero(np.isin(blocks, list(members)))
        assert where.max() - where.min() + 1 == len(where)  # one contiguous stretch of the order
    assert not np.array_equal(order, epoch_order(GROUPS, seed=0, epoch=1, window=2))  # reshuffled each epoch
    assert not np.array_equal(order, epoch_order(GROUPS, seed=1, epoch=0, window=2))  # and per seed


class _Keys(Dataset):
    def __len__(self) -> int:
        return N

    def __getitems__(self, keys: list[int]) -> torch.Tensor:
        return torch.as_tensor(keys)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_the_order_is_the_same_for_any_number_of_workers(workers):
    sampler = EpochSampler(GROUPS, batch_size=4, end_epoch=2, seed=3, window=2)
    loader = DataLoader(_Keys(), batch_sampler=sampler, num_workers=workers, collate_fn=lambda b: b)
    assert [b.tolist() for b in loader] == list(sampler)


def test_a_resume_at_any_batch_continues_the_same_order():
    full = list(EpochSampler(GROUPS, 6, 3, seed=4, window=2))
    per_epoch = EpochSampler(GROUPS, 6, 3).batches_per_epoch()
    for epoch in range(3):
        for batch in range(per_epoch):
            resumed = EpochSampler(GROUPS, 6, 3, seed=4, window=2, start_epoch=epoch, start_batch=batch)
            done = epoch * per_epoch + batch
            assert list(resumed) == full[done:] and len(resumed) == len(full) - done
    assert full != list(EpochSampler(GROUPS, 6, 3, seed=5, window=2))  # the order is seeded


@pytest.mark.parametrize("n,batch_size,world", [(N, 5, 2), (N, 4, 3), (N, 7, 4), (9, 4, 2), (17, 4, 4), (5, 4, 5)])
def test_ranks_are_disjoint_complete_and_step_together(n, batch_size, world):
    groups = np.arange(n) // 3
    ranks = [list(EpochSampler(groups, batch_size, 2, seed=1, rank=r, world=world, window=2)) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1  # every rank runs the same number of steps
    assert all(len(b) >= 1 for r in ranks for b in r)  # and no step is empty
    per_rank = [keys_by_epoch(r, n) for r in ranks]
    for epoch in range(2):
        got = [k for r in per_rank for k in r[epoch]]
        assert sorted(got) == list(range(n))  # disjoint, and together every sample once


def test_too_few_samples_for_the_ranks_is_an_error():
    with pytest.raises(ValueError, match="cannot give each of 3 rank"):
        rank_batches(2, 4, 3)

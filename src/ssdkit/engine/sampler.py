"""A deterministic, shardable, resumable sampler.

:class:`EpochSampler` yields the indices of one epoch: a permutation drawn from
``torch.Generator().manual_seed(seed + epoch)`` (or ``0..n-1`` without shuffling), padded (when
``pad``) to a multiple of ``world_size`` by repeating its start as ``DistributedSampler`` does, then
interleaved over ranks (rank ``r`` takes positions ``r, r + W, r + 2W, ...``).

Resuming mid-epoch. :meth:`resume_at` skips the first ``consumed`` positions of the epoch's padded
order - the samples all ranks together have already trained on - before sharding. With interleaved
sharding, the remaining positions of each rank are exactly those it would have seen next in the
uninterrupted run, so batches (and losses) continue identically. With another world size the run
continues from the same global position (not bit-identical, but nothing is repeated or skipped).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EpochSampler"]


class EpochSampler(Sampler[int]):
    """Indices of one epoch for one rank (see the module docstring).

    Args:
        n: dataset length.
        shuffle: draw a new permutation each epoch from ``seed + epoch``.
        seed: base seed.
        rank, world_size: this process's shard.
        pad: pad to a multiple of ``world_size`` (training; every rank gets as many samples). Without
            padding (evaluation) ranks may get one sample less and no sample is repeated.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = True) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.n = int(n)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.pad = bool(pad)
        self.epoch = 0
        self._skip_epoch: int | None = None
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next ``iter()`` yields (called by the loader)."""
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, consumed: int) -> None:
        """Skip the first ``consumed`` positions (over all ranks) of ``epoch``'s order; 0 clears it."""
        self._skip_epoch = int(epoch) if consumed > 0 else None
        self._skip = max(0, int(consumed))

    def order(self) -> list[int]:
        """The current epoch's full (padded, unsharded) order."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        if self.pad and self.world_size > 1 and self.n > 0:
            total = -(-self.n // self.world_size) * self.world_size
            while len(idx) < total:
                idx += idx[: total - len(idx)]
        return idx

    def total_per_rank(self) -> int:
        """Samples per rank in a full epoch (no skipping)."""
        if self.pad:
            return -(-self.n // self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        idx = self.order()
        if self._skip_epoch == self.epoch:
            idx = idx[self._skip:]
        return iter(idx[self.rank::self.world_size])

    def __len__(self) -> int:
        n = self.n
        if self.pad and self.world_size > 1 and n > 0:
            n = -(-n // self.world_size) * self.world_size
        if self._skip_epoch == self.epoch:
            n = max(0, n - self._skip)
        return len(range(self.rank, n, self.world_size))

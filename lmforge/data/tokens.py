"""``ShardedTokens``: the token files of a sharded split, read as one 1-D array.

Each shard stays its own memory map; indexing finds the shard of each position
(``searchsorted`` over the shards' starts), so evaluation and the training windows
index a sharded split as they index a one-file one. A slice inside one shard is a
view of its map; one across shards, or an index array, is a copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ShardedTokens:
    def __init__(self, shards: Sequence[np.ndarray]) -> None:
        if not shards:
            raise ValueError("ShardedTokens needs at least one shard")
        self.shards = list(shards)
        self.lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)  # (n_shards + 1,)
        self.dtype = self.shards[0].dtype
        self.shape = (int(self.starts[-1]),)
        self.ndim = 1

    def __len__(self) -> int:
        return self.shape[0]

    def shard_of(self, positions: np.ndarray) -> np.ndarray:
        """The shard holding each position (positions in ``0 .. len - 1``)."""
        return np.searchsorted(self.starts, positions, side="right") - 1

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"index {key} out of range for {n} tokens")
            k = int(self.shard_of(np.int64(i)))
            return self.shards[k][i - self.starts[k]]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            if stop <= start:
                return np.zeros(0, dtype=self.dtype)
            first, last = int(self.shard_of(np.int64(start))), int(self.shard_of(np.int64(stop - 1)))
            if first == last:  # a view of one shard's map
                return self.shards[first][start - self.starts[first] : stop - self.starts[first]]
            pieces = [
                self.shards[k][max(start - self.starts[k], 0) : min(stop - self.starts[k], self.lengths[k])]
                for k in range(first, last + 1)
            ]
            return np.concatenate(pieces)
        index = np.asarray(key)
        if index.dtype == bool:
            return np.asarray(self)[index]
        index = index.astype(np.int64)
        index = np.where(index < 0, index + n, index)
        if index.size and (index.min() < 0 or index.max() >= n):
            raise IndexError(f"index out of range for {n} tokens")
        flat = index.ravel()
        shard = self.shard_of(flat)
        out = np.empty(flat.shape, dtype=self.dtype)
        for k in np.unique(shard):
            hit = shard == k
            out[hit] = self.shards[k][flat[hit] - self.starts[k]]
        return out.reshape(index.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.concatenate(self.shards)
        return whole if dtype is None else whole.astype(dtype)

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()

    def __repr__(self) -> str:
        return f"ShardedTokens({len(self):,} tokens in {len(self.shards)} shards, {self.dtype})"

"""Training windows over a token array, and the loader that batches them.

``WikiTextDataset`` cuts windows of ``block_size + 1`` tokens every ``stride``
tokens; item ``i`` is ``(x, y) = (chunk[:-1], chunk[1:])``::

    tokens [10, 20, 30, 40, 99], block_size 4  ->  x [10, 20, 30, 40], y [20, 30, 40, 99]

``RandomWindowDataset`` takes windows at random offsets instead, the same for
the same ``(seed, epoch, index)``; ``make_dataset`` picks one of the two for
``DataConfig.sampling``. ``TrainLoader`` shuffles windows per epoch, shards them
across ranks, and can resume at the exact batch it stopped at.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lmforge.errors import DataError, UsageError

Sampling = Literal["sliding", "random"]


def _check_length(tokens, block_size: int, split: str) -> int:
    if block_size < 1:
        raise UsageError(f"--block-size must be >= 1, got {block_size}")
    n = len(tokens)
    longest = int(shard_lengths(tokens).max())
    if longest < block_size + 1:
        shards = f" (its longest shard {longest})" if longest < n else ""
        raise DataError(
            f"split '{split}' has {n} tokens{shards}, fewer than one window of block_size + 1 = "
            f"{block_size + 1}",
            "use a smaller --block-size or a larger split",
        )
    return n


def shard_lengths(tokens) -> np.ndarray:
    """Tokens per shard: ``ShardedTokens`` has several, any other array is one."""
    lengths = getattr(tokens, "lengths", None)
    return np.asarray(lengths if lengths is not None else [len(tokens)], dtype=np.int64)


class _Windows(Dataset):
    """Shared parts: item ``i`` is the window starting at ``self._start(i)``. A sharded split's
    windows are cut per shard (none straddles two shards); ``shard_starts`` is where each
    shard begins in the split."""

    def __init__(self, tokens, block_size: int, split: str) -> None:
        self.tokens = tokens
        self.block_size = block_size
        self.split = split
        self.n_tokens = _check_length(tokens, block_size, split)
        self.lengths = shard_lengths(tokens)
        self.shard_starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self._offsets = np.arange(block_size + 1, dtype=np.int64)

    def position(self, start: int) -> tuple[int, int]:
        """``(shard, offset in it)`` of split position ``start``."""
        shard = int(np.searchsorted(self.shard_starts, start, side="right") - 1)
        return shard, int(start - self.shard_starts[shard])

    def starts(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        start = int(self.starts([index % len(self)])[0])
        chunk = torch.from_numpy(np.asarray(self.tokens[start : start + self.block_size + 1], dtype=np.int64))
        return chunk[:-1], chunk[1:]

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows ``indices`` stacked, with one gather from the (memory-mapped) array."""
        starts = self.starts(np.asarray(indices, dtype=np.int64))
        chunks = torch.from_numpy(np.asarray(self.tokens[starts[:, None] + self._offsets], dtype=np.int64))
        return chunks[:, :-1], chunks[:, 1:]  # (B, T) each


class WikiTextDataset(_Windows):
    """Windows of ``block_size + 1`` tokens at ``0, stride, 2*stride, ...``.

    Tail: when the strided windows stop short of the end of the array, one more
    window is added, aligned to the end (it overlaps the one before it), so no
    token is left out of training. ``stride > block_size + 1`` skips tokens
    between windows on purpose.
    """

    def __init__(self, tokens, block_size: int, stride: int | None = None, *, split: str = "train") -> None:
        super().__init__(tokens, block_size, split)
        stride = block_size if stride is None else stride
        if stride < 1:
            raise UsageError(f"--stride must be >= 1, got {stride}")
        self.stride = stride
        last = self.lengths - (block_size + 1)  # the last valid start, per shard
        fits = last >= 0
        self._n_strided = np.where(fits, last // stride + 1, 0)
        tail = fits & (last % stride != 0)  # an end-aligned window covers the rest
        self._last = np.maximum(last, 0)
        self._first = np.concatenate([[0], np.cumsum(self._n_strided + tail)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._first[-1])

    def starts(self, indices) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        shard = np.searchsorted(self._first, indices, side="right") - 1
        local = indices - self._first[shard]
        start = np.where(local >= self._n_strided[shard], self._last[shard], local * self.stride)
        return self.shard_starts[shard] + start


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A counter-based hash: the same offsets in any process, in any order."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class RandomWindowDataset(_Windows):
    """Windows at random offsets: item ``i`` in epoch ``e`` starts at a position drawn
    from ``(seed, e, i)`` alone. ``len`` is ``num_samples`` (default: as many windows
    as a sliding pass with ``stride = block_size`` would have). The loader calls
    ``set_epoch`` so every epoch sees new offsets."""

    def __init__(
        self, tokens, block_size: int, *, seed: int = 0, num_samples: int | None = None, split: str = "train"
    ) -> None:
        super().__init__(tokens, block_size, split)
        self.seed = seed
        self.epoch = 0
        self.num_samples = num_samples or (self.n_tokens - 1) // block_size
        # starts 0 .. n - block_size - 1 of each shard, numbered across the shards
        self._first = np.concatenate([[0], np.cumsum(np.maximum(self.lengths - block_size, 0))]).astype(
            np.int64
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def starts(self, indices) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.uint64)
        with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose
            key = _splitmix64(np.uint64(self.seed & 0xFFFFFFFFFFFFFFFF) ^ _splitmix64(np.uint64(self.epoch)))
            h = _splitmix64(indices ^ key)
        drawn = (h % np.uint64(self._first[-1])).astype(np.int64)
        shard = np.searchsorted(self._first, drawn, side="right") - 1
        return self.shard_starts[shard] + drawn - self._first[shard]


def make_dataset(
    tokens,
    block_size: int,
    stride: int | None = None,
    sampling: Sampling = "sliding",
    seed: int = 0,
    *,
    split: str = "train",
) -> WikiTextDataset | RandomWindowDataset:
    """The training dataset for ``DataConfig.sampling``."""
    if sampling == "sliding":
        return WikiTextDataset(tokens, block_size, stride, split=split)
    if sampling == "random":
        return RandomWindowDataset(tokens, block_size, seed=seed, split=split)
    raise UsageError(f"--sampling must be 'sliding' or 'random', got {sampling!r}")


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(
        np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, epoch]).generate_state(1)[0]
    )


class TrainLoader:
    """An endless iterator of ``(x, y)`` batches of shape ``(batch_size, block_size)``, int64.

    Epoch ``e`` visits the windows in a permutation drawn from a ``torch.Generator``
    seeded with ``(seed, e)``. The permutation is cut into global batches of
    ``batch_size * world_size`` windows (an incomplete last one is dropped) and rank
    ``r`` takes slice ``[r * batch_size, (r + 1) * batch_size)`` of each, so the global
    order is the same for any number of ranks. ``state_dict()`` is the position
    (epoch, global batches consumed); a fresh loader given it continues with exactly
    the batch an uninterrupted one would give next.
    """

    def __init__(
        self,
        dataset: _Windows,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is not in a world of {world_size}")
        if num_workers < 0:
            raise UsageError(f"--num-workers must be >= 0, got {num_workers}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.global_batch_size = batch_size * world_size
        self.batches_per_epoch = len(dataset) // self.global_batch_size
        if self.batches_per_epoch == 0:
            split = getattr(dataset, "split", "train")
            raise DataError(
                f"split '{split}' gives {len(dataset)} windows, fewer than one batch of "
                f"{batch_size} x {world_size} rank(s)",
                "use a smaller --batch-size, --block-size or --stride",
            )
        self._epoch = 0
        self._batch = 0
        self._order: torch.Tensor | None = None  # this epoch's permutation
        self._workers: Iterator | None = None  # the DataLoader iterator when num_workers > 0

    @property
    def epoch(self) -> int:
        return self._epoch

    def state_dict(self) -> dict:
        """The position: epoch and global batches consumed. Over a sharded split also where
        this rank's next window starts (``shard``, ``offset``), for a person reading it."""
        state = {"epoch": self._epoch, "batch": self._batch}
        if len(getattr(self.dataset, "lengths", ())) > 1 and self._batch < self.batches_per_epoch:
            start = int(self.dataset.starts([self._rank_indices(self._batch)[0]])[0])
            state["shard"], state["offset"] = self.dataset.position(start)
        return state

    def position_from(self, state: dict, saved_world_size: int) -> dict:
        """A saved position, in global batches of this loader's size. A loader of another
        number of processes counted bigger or smaller global batches: the position becomes
        the same number of windows of the global order, rounded up to a whole batch so no
        window is seen twice (at most one global batch minus one windows are skipped)."""
        position = {"epoch": int(state["epoch"]), "batch": int(state["batch"])}
        if saved_world_size != self.world_size:
            windows = position["batch"] * self.batch_size * saved_world_size
            batch = -(-windows // self.global_batch_size)
            if batch > self.batches_per_epoch:
                position["epoch"], batch = position["epoch"] + 1, 0
            position["batch"] = batch
        return position

    def load_state_dict(self, state: dict) -> None:
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch <= self.batches_per_epoch:
            raise DataError(
                f"data position epoch {epoch}, batch {batch} does not fit "
                f"{self.batches_per_epoch} batches per epoch",
                "the batch size, world size or data changed since the checkpoint",
            )
        self._epoch, self._batch = epoch, batch
        self._order, self._workers = None, None

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            n = len(self.dataset)
            if self.shuffle:
                g = torch.Generator().manual_seed(_epoch_seed(self.seed, self._epoch))
                self._order = torch.randperm(n, generator=g)
            else:
                self._order = torch.arange(n)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self._epoch)
        return self._order

    def _rank_indices(self, batch: int) -> list[int]:
        start = batch * self.global_batch_size + self.rank * self.batch_size
        return self._epoch_order()[start : start + self.batch_size].tolist()

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batch >= self.batches_per_epoch:
            self._epoch += 1
            self._batch = 0
            self._order, self._workers = None, None
        if self.num_workers == 0:
            x, y = self.dataset.get_batch(self._rank_indices(self._batch))
        else:
            if self._workers is None:
                self._workers = self._start_workers()
            x, y = next(self._workers)
        self._batch += 1
        return x, y

    def _start_workers(self) -> Iterator:
        """A DataLoader over the rest of this epoch, from the current position (the workers
        may read ahead; the position counts only batches handed out)."""
        self._epoch_order()
        batches = [self._rank_indices(b) for b in range(self._batch, self.batches_per_epoch)]
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=_stack,
        )
        return iter(loader)


def _stack(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*items, strict=True)
    return torch.stack(xs), torch.stack(ys)

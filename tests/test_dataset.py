"""Training windows and the resumable, rank-sharded loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.data.dataset import RandomWindowDataset, TrainLoader, WikiTextDataset, make_dataset
from lmforge.errors import DataError, UsageError


def test_seed_window_example():
    ds = WikiTextDataset(np.array([10, 20, 30, 40, 99], dtype=np.uint16), block_size=4, stride=2)
    assert len(ds) == 1
    x, y = ds[0]
    assert x.tolist() == [10, 20, 30, 40] and y.tolist() == [20, 30, 40, 99]
    assert x.dtype == torch.int64 and y.dtype == torch.int64


def test_sliding_windows_and_tail():
    tokens = np.arange(20, dtype=np.uint16)
    ds = WikiTextDataset(tokens, block_size=4, stride=4)
    starts = [int(ds[i][0][0]) for i in range(len(ds))]
    # strided windows 0, 4, 8, 12 end at 16; the tail window is aligned to the end (start 15)
    assert starts == [0, 4, 8, 12, 15]
    assert ds[len(ds) - 1][1][-1].item() == 19  # the last token is trained on
    covered = {int(t) for i in range(len(ds)) for t in ds[i][1]}
    assert covered == set(range(1, 20))  # every token (but the first) is a target
    # no tail window when the strides end exactly at the end
    assert len(WikiTextDataset(np.arange(17), block_size=4, stride=4)) == 4
    assert len(WikiTextDataset(np.arange(10), block_size=4, stride=1)) == 6
    x, y = ds.get_batch([0, 4])
    assert x.shape == (2, 4) and x[1].tolist() == [15, 16, 17, 18] and y[1].tolist() == [16, 17, 18, 19]


def test_split_shorter_than_a_window():
    with pytest.raises(DataError) as exc:
        make_dataset(np.arange(4), block_size=4, stride=2, sampling="sliding", seed=0, split="validation")
    assert (
        "split 'validation' has 4 tokens" in exc.value.message and "block_size + 1 = 5" in exc.value.message
    )
    with pytest.raises(UsageError, match="--stride"):
        WikiTextDataset(np.arange(10), block_size=4, stride=0)
    with pytest.raises(UsageError, match="--sampling"):
        make_dataset(np.arange(10), 4, 2, "bogus", 0)


def test_random_windows_are_deterministic():
    tokens = np.arange(1000, dtype=np.uint32)
    a = make_dataset(tokens, 8, None, "random", seed=1)
    b = RandomWindowDataset(tokens, 8, seed=1)
    assert isinstance(a, RandomWindowDataset) and len(a) == (1000 - 1) // 8
    xa, _ = a.get_batch(range(len(a)))
    xb = torch.stack([b[i][0] for i in range(len(b))])
    assert torch.equal(xa, xb)  # per (seed, epoch, index), in any order
    x, y = a[5]
    assert torch.equal(y[:-1], x[1:])
    starts = a.starts(np.arange(len(a)))
    assert starts.min() >= 0 and starts.max() <= 1000 - 9
    assert len(set(starts.tolist())) > len(a) // 2  # not all the same
    a.set_epoch(1)
    assert not np.array_equal(a.starts(np.arange(len(a))), starts)  # new offsets each epoch
    c = RandomWindowDataset(tokens, 8, seed=2)
    assert not np.array_equal(c.starts(np.arange(len(c))), starts)


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def test_loader_shapes_epochs_and_order():
    ds = WikiTextDataset(np.arange(200, dtype=np.uint16), block_size=8, stride=8)  # 24 windows + tail
    loader = TrainLoader(ds, batch_size=4, seed=0)
    assert loader.batches_per_epoch == len(ds) // 4 == 6
    batches = _take(loader, 13)
    x, y = batches[0]
    assert x.shape == (4, 8) and x.dtype == torch.int64 and torch.equal(y[:, :-1], x[:, 1:])
    assert loader.epoch == 2 and loader.state_dict() == {"epoch": 2, "batch": 1}
    first_epoch = torch.cat([b[0][:, 0] for b in batches[:6]])
    assert len(set(first_epoch.tolist())) == 24  # a permutation: no window twice in an epoch
    assert not torch.equal(batches[0][0], batches[6][0])  # a new order next epoch
    again = _take(TrainLoader(ds, batch_size=4, seed=0), 13)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    other_seed = next(TrainLoader(ds, batch_size=4, seed=1))
    assert not torch.equal(other_seed[0], batches[0][0])
    ordered = next(TrainLoader(ds, batch_size=4, seed=0, shuffle=False))
    assert ordered[0][:, 0].tolist() == [0, 8, 16, 24]


@pytest.mark.parametrize("sampling", ["sliding", "random"])
def test_loader_resume_mid_epoch(sampling):
    ds = make_dataset(np.arange(500, dtype=np.uint16), 8, 4, sampling, seed=3)
    straight = TrainLoader(ds, batch_size=5, seed=7)
    expected = _take(straight, 40)  # crosses epoch boundaries
    for stop in (3, straight.batches_per_epoch, straight.batches_per_epoch + 2):
        first = TrainLoader(ds, batch_size=5, seed=7)
        _take(first, stop)
        state = first.state_dict()
        fresh_ds = make_dataset(np.arange(500, dtype=np.uint16), 8, 4, sampling, seed=3)
        resumed = TrainLoader(fresh_ds, batch_size=5, seed=7)
        resumed.load_state_dict(state)
        rest = _take(resumed, 40 - stop)
        for (xa, ya), (xb, yb) in zip(expected[stop:], rest, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_world_size_slicing():
    ds = WikiTextDataset(np.arange(400, dtype=np.uint16), block_size=8, stride=3)
    single = TrainLoader(ds, batch_size=6, seed=11)
    ranks = [TrainLoader(ds, batch_size=3, seed=11, rank=r, world_size=2) for r in range(2)]
    assert single.batches_per_epoch == ranks[0].batches_per_epoch
    for _ in range(single.batches_per_epoch + 3):
        x, y = next(single)
        parts = [next(r) for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_loader_with_workers_matches_and_resumes():
    ds = WikiTextDataset(np.arange(300, dtype=np.uint16), block_size=8, stride=8)
    inline = _take(TrainLoader(ds, batch_size=4, seed=5), 12)
    workers = TrainLoader(ds, batch_size=4, seed=5, num_workers=1)
    got = _take(workers, 5)
    resumed = TrainLoader(ds, batch_size=4, seed=5, num_workers=1)
    resumed.load_state_dict(workers.state_dict())
    got += _take(resumed, 7)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(inline, got, strict=True))


def test_loader_errors():
    ds = WikiTextDataset(np.arange(40), block_size=8, stride=8)  # 5 windows
    with pytest.raises(DataError, match="fewer than one batch"):
        TrainLoader(ds, batch_size=3, seed=0, world_size=2)
    with pytest.raises(UsageError, match="--batch-size"):
        TrainLoader(ds, batch_size=0, seed=0)
    with pytest.raises(UsageError, match="rank 2"):
        TrainLoader(ds, batch_size=1, seed=0, rank=2, world_size=2)
    loader = TrainLoader(ds, batch_size=2, seed=0)
    with pytest.raises(DataError, match="does not fit"):
        loader.load_state_dict({"epoch": 0, "batch": 99})


def test_position_from_another_world_size_continues_the_global_order():
    """A position saved by 2 processes (global batch 2 x 3) resumes in 1 process (global batch 3)
    at the same window of the global order, rounded up to a whole batch."""
    ds = WikiTextDataset(torch.arange(200), block_size=4, stride=4)
    one = TrainLoader(ds, batch_size=3, seed=0)
    assert one.position_from({"epoch": 1, "batch": 4}, saved_world_size=1) == {"epoch": 1, "batch": 4}
    # 4 global batches of 2 x 3 = 24 windows = 8 batches of 3
    assert one.position_from({"epoch": 0, "batch": 4}, saved_world_size=2) == {"epoch": 0, "batch": 8}
    # 5 x 6 = 30 windows -> 10 batches of 3; 3 x 6 = 18 -> 6; 1 x 6 -> 2
    assert one.position_from({"epoch": 0, "batch": 5}, saved_world_size=2)["batch"] == 10
    two = TrainLoader(ds, batch_size=3, seed=0, rank=1, world_size=2)
    # 7 batches of 3 = 21 windows -> ceil(21 / 6) = 4 global batches of 6 (3 windows skipped, none repeated)
    assert two.position_from({"epoch": 0, "batch": 7}, saved_world_size=1) == {"epoch": 0, "batch": 4}

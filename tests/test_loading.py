"""Training-batch loading: static frame buckets, host-side length summaries, worker processes, pinned memory."""
import pickle
import warnings

import numpy as np
import pytest
import torch

from bpmt_fast.data.dataset import PoseDataset, collate_padded, collate_to_buckets, frame_buckets
from bpmt_fast.data.sequence import PoseSequence
from bpmt_fast.train.config import load_config
from bpmt_fast.train.data import (build_datasets, eval_loader, identity_loader, load_sequences, make_split,
                                  shuffled_loader)
from bpmt_fast.train.distributed import Parallel

SMALL = {"data": {"synthetic": {"num_subjects": 6, "sequences_per_subject": 4, "min_frames": 10, "max_frames": 30},
                  "max_frames": 24, "test_subjects": 2, "val_subjects": 0}}
BUCKETS = frame_buckets([12, 18, 40], 24)  # -> [12, 18, 24]: every training batch lands in one


@pytest.fixture(scope="module")
def data():
    config = load_config(overrides=SMALL)
    sequences, _ = load_sequences(config.data)
    return build_datasets(sequences, make_split(sequences, config.data), config.data, config.augment, seed=0)


def items(lengths, joints=17):
    """Items as PoseDataset yields them, with poses 1, 2, ... so padding zeros stand out."""
    return [{"poses": torch.full((n, joints, 3), float(i + 1)), "label": i, "index": i} for i, n in enumerate(lengths)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def test_frame_buckets_end_at_max_frames():
    assert frame_buckets([12, 18, 40], 24) == [12, 18, 24]
    assert frame_buckets([24, 30], 24) == [24]
    assert frame_buckets([30, 10], 24) == [10, 24]  # sorted leniently
    assert frame_buckets([], 24) == []  # nothing configured: pad to each batch's longest
    assert frame_buckets([8, 16], None) == [8, 16]
    with pytest.raises(ValueError, match=">= 1"):
        frame_buckets([0, 8], 24)


def test_bucket_is_the_smallest_that_holds_the_longest_sequence():
    collate = collate_to_buckets([8, 16, 32])
    for lengths, frames in (([3, 5], 8), ([8, 2], 8), ([9, 4], 16), ([16], 16), ([17, 30], 32), ([40, 1], 40)):
        batch = collate(items(lengths))
        assert batch["poses"].shape == (len(lengths), frames, 17, 3), lengths
        assert batch["lengths"].tolist() == lengths
        assert batch["max_length"] == max(lengths) and isinstance(batch["max_length"], int)
        assert batch["total_frames"] == sum(lengths) and isinstance(batch["total_frames"], int)
        for i, n in enumerate(lengths):
            assert (batch["poses"][i, :n] == i + 1).all() and (batch["poses"][i, n:] == 0).all()


def test_no_buckets_pads_to_the_longest_and_buckets_are_checked():
    batch = collate_padded(items([5, 11, 2]))
    assert batch["poses"].shape[1] == 11 and batch["max_length"] == 11 and batch["total_frames"] == 18
    for bad in ([16, 8], [8, 8], [0], [2.5]):
        with pytest.raises(ValueError, match="frame bucket"):
            collate_to_buckets(bad)


def test_bucket_collate_pickles_for_worker_processes():
    collate = pickle.loads(pickle.dumps(collate_to_buckets([8, 16])))
    assert collate(items([9]))["poses"].shape[1] == 16


# The two training loaders, as `make(data, epoch=..., **loader options)`.
TRAINING_LOADERS = pytest.mark.parametrize("make", [
    lambda d, **kw: shuffled_loader(d.train, 5, seed=0, epoch=kw.pop("epoch"), **kw),
    lambda d, **kw: identity_loader(d.train, 2, 2, seed=0, epoch=kw.pop("epoch"), **kw),
], ids=["shuffled", "identity"])


@TRAINING_LOADERS
def test_every_training_batch_has_a_bucket_shape(data, make):
    for epoch in range(3):
        for batch in make(data, epoch=epoch, buckets=BUCKETS):
            assert batch["poses"].shape[1] in BUCKETS
            assert batch["max_length"] == int(batch["lengths"].max()) <= 24
            assert batch["total_frames"] == int(batch["lengths"].sum())


@TRAINING_LOADERS
def test_workers_give_the_same_batches_as_the_main_process(data, make):
    for epoch in range(2):
        main = list(make(data, epoch=epoch, buckets=BUCKETS))
        workers = list(make(data, epoch=epoch, buckets=BUCKETS, workers=2))
        assert len(main) > 1
        assert_same_batches(main, workers)


def test_eval_loader_with_workers_and_buckets(data):
    subset = data.subset(list(range(10)))
    main = list(eval_loader(subset, batch_size=4, buckets=BUCKETS))
    assert [b["indices"] for b in main] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert_same_batches(main, list(eval_loader(subset, batch_size=4, buckets=BUCKETS, workers=2)))


def pinned_batches(data) -> list:
    with warnings.catch_warnings():
        # CPU-only torch warns that there is no accelerator to pin for, and yields unpinned batches
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        return list(shuffled_loader(data.train, 5, seed=0, epoch=1, buckets=BUCKETS, pin_memory=True))


def test_pinned_memory_gives_the_same_batches(data):
    assert_same_batches(list(shuffled_loader(data.train, 5, seed=0, epoch=1, buckets=BUCKETS)), pinned_batches(data))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a CUDA device to pin for")
def test_pinned_memory_batches_are_pinned(data):
    assert all(batch["poses"].is_pinned() for batch in pinned_batches(data))


def test_rank_halves_concatenate_to_the_single_batch_with_buckets(data):
    single = next(iter(shuffled_loader(data.train, 6, seed=0, epoch=3, buckets=BUCKETS)))
    halves = [next(iter(shuffled_loader(data.train, 6, 0, 3, Parallel(rank=r, world_size=2), buckets=BUCKETS)))
              for r in range(2)]
    assert halves[0]["indices"] + halves[1]["indices"] == single["indices"]
    assert torch.equal(torch.cat([h["lengths"] for h in halves]), single["lengths"])
    assert sum(h["total_frames"] for h in halves) == single["total_frames"]
    for half, offset in zip(halves, (0, 3)):
        assert half["poses"].shape[1] in BUCKETS
        for i, length in enumerate(half["lengths"].tolist()):
            torch.testing.assert_close(half["poses"][i, :length], single["poses"][offset + i, :length])


def test_workers_inherit_the_cleaned_poses(data):
    dataset = PoseDataset(data.train.sequences[:4], data.skeleton, max_frames=24)
    list(eval_loader(dataset, batch_size=2, workers=1))
    assert len(dataset._cleaned) == 4  # filled in the main process before the workers started


def test_non_finite_poses_never_reach_a_batch(data):
    poses = np.array(data.train.sequences[0].poses, dtype=np.float32)
    poses[2, 3, 0] = np.nan
    dataset = PoseDataset([PoseSequence(poses, "s", "", skeleton=data.skeleton)], data.skeleton)
    with pytest.raises(ValueError, match="NaN or inf"):
        list(eval_loader(dataset))

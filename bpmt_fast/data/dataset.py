"""Torch side of the data pipeline: a dataset of pose sequences, padded collation, and a P x K batch sampler.

Typical training loader::

    dataset = PoseDataset(sequences, "coco17", transform=Compose([...]), max_frames=60)
    sampler = IdentityBatchSampler(dataset.labels, identities_per_batch=8, sequences_per_identity=4, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_to_buckets([30, 60]), num_workers=2)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for batch in loader:
            out = model(batch["poses"], batch["lengths"])

Under torch.distributed, bpmt_fast.train.data shards each global batch over the ranks itself (and keys the
augmentation by position in the global batch), so this sampler always yields whole global batches.
"""
from __future__ import annotations

import functools
import math
import operator
from typing import Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from ..model.skeleton import SkeletonFormat, get_format
from .sequence import PoseSequence
from .transforms import NORMALISATION_MODES, check_poses
from .transforms import normalise as normalise_poses

__all__ = ["PoseDataset", "collate_padded", "collate_to_buckets", "frame_buckets", "IdentityBatchSampler"]


def _check_seed(name: str, value) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class PoseDataset(Dataset):
    """Pose sequences as model-ready items.

    Item ``i`` is a dict: ``poses`` float32 tensor ``(T, J, C)``, ``label`` int (``label_map[subject]``),
    ``subject``, ``view``, ``condition``, ``sequence_id`` (strings) and ``index`` (= i). Per item, in order:

    1. ``normalise`` (default on; see ``bpmt_fast.data.transforms.normalise``, ``normalisation`` picks its mode:
       hips or body) -- off only for poses that are already normalised, so raw pixel coordinates never reach
       the model.
    2. ``transform(poses, rng)`` if given (an augmentation, e.g. ``Compose([...])``).
    3. Sequences longer than ``max_frames`` are cropped to it: a random window when ``random_crop`` is true,
       the centre window otherwise. ``random_crop=None`` (default) means "random when a transform is given"
       (training), centre crop without one (evaluation: deterministic).

    Randomness: ``__getitem__`` draws from a generator seeded by ``(seed, epoch, worker id)`` that advances with
    every item, so a run is reproducible for a fixed seed, number of workers and sampler, and a sequence drawn
    twice in one batch gets two different augmentations. Call ``set_epoch`` each epoch (before creating the
    loader iterator; with ``persistent_workers`` the workers keep the epoch they started with).
    ``get(i, rng)`` uses a generator you pass instead.

    ``label_map`` maps subject -> int; when not given it is built from the sequences (sorted subjects ->
    0, 1, ...). Every sequence's subject must be in it. Sequences must all use ``skeleton`` (their own
    ``skeleton`` field must name the same format) and the same number of channels.
    """

    def __init__(self, sequences: Sequence[PoseSequence], skeleton: str | SkeletonFormat,
                 transform: Callable | None = None, normalise: bool = True, max_frames: int | None = None,
                 label_map: Mapping[Hashable, int] | None = None, *, min_confidence: float = 0.05,
                 random_crop: bool | None = None, seed: int = 0, normalisation: str = "hips"):
        self.sequences = list(sequences)
        if not self.sequences:
            raise ValueError("PoseDataset needs at least one sequence")
        self.skeleton = get_format(skeleton)
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be a callable transform(poses, rng), got {transform!r}")
        self.transform = transform
        self.normalise = bool(normalise)
        if normalisation not in NORMALISATION_MODES:
            raise ValueError(f"unknown normalisation {normalisation!r}; valid: {', '.join(NORMALISATION_MODES)}")
        self.normalisation = normalisation
        self.min_confidence = float(min_confidence)
        if max_frames is not None:
            max_frames = _check_seed("max_frames", max_frames)
            if max_frames < 1:
                raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.max_frames = max_frames
        self.random_crop = (transform is not None) if random_crop is None else bool(random_crop)
        self.seed = _check_seed("seed", seed)
        self.epoch = 0
        self._rng: np.random.Generator | None = None
        self._cleaned: dict[int, np.ndarray] = {}  # index -> normalised poses (see _clean)
        self._rng_key: tuple | None = None

        channels = None
        for i, seq in enumerate(self.sequences):
            where = f"sequence {i} ({getattr(seq, 'sequence_id', '') or getattr(seq, 'source', '') or 'no id'})"
            for attr in ("poses", "subject"):
                if not hasattr(seq, attr):
                    raise ValueError(f"{where}: not a PoseSequence (no {attr!r})")
            name = getattr(seq, "skeleton", None)
            if name is not None and get_format(name).name != self.skeleton.name:
                raise ValueError(f"{where}: skeleton format {name!r}, the dataset uses {self.skeleton.name!r}")
            shape = np.shape(seq.poses)
            if len(shape) != 3 or shape[0] < 1 or shape[1] != self.skeleton.num_joints or shape[2] not in (3, 4):
                raise ValueError(f"{where}: poses must be (T >= 1, {self.skeleton.num_joints}, 3 or 4), got {shape}")
            if channels is None:
                channels = shape[2]
            elif shape[2] != channels:
                raise ValueError(f"{where}: {shape[2]} channels, earlier sequences have {channels}; "
                                 f"do not mix 2D and 3D poses in one dataset")
        self.channels = channels

        subjects = [seq.subject for seq in self.sequences]
        if label_map is None:
            label_map = {s: i for i, s in enumerate(sorted(set(subjects), key=lambda s: (str(type(s)), s)))}
        else:
            label_map = dict(label_map)
            unknown = sorted({str(s) for s in subjects if s not in label_map})
            if unknown:
                raise ValueError(f"label_map has no label for {len(unknown)} subject(s): "
                                 f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}")
            for s, v in label_map.items():
                if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                    raise ValueError(f"label_map values must be ints, got {v!r} for subject {s!r}")
        self.label_map: dict = label_map
        self._labels = [int(label_map[s]) for s in subjects]

    # ---- bookkeeping -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def labels(self) -> list[int]:
        """Integer label of every sequence, in order (for ``IdentityBatchSampler``)."""
        return list(self._labels)

    @property
    def num_classes(self) -> int:
        return len(self.label_map)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _check_seed("epoch", epoch)
        self._rng = None

    def _stream_rng(self) -> np.random.Generator:
        info = get_worker_info()
        key = (self.seed, self.epoch, info.id if info is not None else -1)
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([self.seed, self.epoch, key[2] + 1])
            self._rng_key = key
        return self._rng

    # ---- items -------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict:
        return self.get(index)

    def _clean(self, index: int, seq, where: str) -> np.ndarray:
        """Checked (and normalised) poses of one sequence, computed once: they do not change between epochs.

        This is where the data path validates values: ``check_poses`` rejects NaN / inf (and bad shapes) in the
        input, and the normalised result is checked again (a tiny torso scale could overflow float32), so every
        pose the model receives is finite. The model does not re-check values in training.

        The cache lives in this process. Worker processes get a copy of the dataset, so their own fills are
        lost when the loader ends (``persistent_workers`` keeps them for one loader's life only); call
        ``clean_all`` in the main process before starting workers so they inherit a full cache.
        """
        if index not in self._cleaned:
            if self.normalise:
                try:
                    poses = normalise_poses(seq.poses, self.skeleton, self.min_confidence, self.normalisation)
                except ValueError as exc:
                    raise ValueError(f"{where}: {exc}") from None
                poses = check_poses(poses, f"{where} normalised poses")
            else:
                poses = np.array(check_poses(seq.poses, f"{where} poses", skeleton=self.skeleton), dtype=np.float32)
            self._cleaned[index] = poses
        return self._cleaned[index]

    def clean_all(self) -> None:
        """Check and normalise every sequence now (once per dataset), so worker processes inherit the cache
        instead of each recomputing it for every loader they serve."""
        for index, seq in enumerate(self.sequences):
            if index not in self._cleaned:
                self._clean(index, seq, f"sequence {index} ({getattr(seq, 'sequence_id', '') or 'no id'})")

    def get(self, index: int, rng: np.random.Generator | None = None) -> dict:
        try:
            index = operator.index(index)
        except TypeError:
            raise TypeError(f"PoseDataset index must be an integer, got {index!r}") from None
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} sequences")
        index %= len(self)
        seq = self.sequences[index]
        where = f"sequence {index} ({getattr(seq, 'sequence_id', '') or 'no id'})"
        needs_rng = self.transform is not None or (self.random_crop and self.max_frames is not None)
        if rng is None and needs_rng:
            rng = self._stream_rng()
        poses = self._clean(index, seq, where)
        if self.transform is not None:
            poses = self.transform(poses.copy(), rng)  # a copy: the clean poses are cached for the next epoch
            poses = check_poses(poses, f"{where}: poses after {self.transform!r}", skeleton=self.skeleton,
                                channels=self.channels)
        frames = len(poses)
        if self.max_frames is not None and frames > self.max_frames:
            if self.random_crop:
                start = int(rng.integers(0, frames - self.max_frames + 1))
            else:
                start = (frames - self.max_frames) // 2
            poses = poses[start:start + self.max_frames]
        return {
            "poses": torch.from_numpy(np.array(poses, dtype=np.float32)),  # a copy: never a view of the cache
            "label": self._labels[index],
            "subject": seq.subject,
            "view": getattr(seq, "view", ""),
            "condition": getattr(seq, "condition", ""),
            "sequence_id": getattr(seq, "sequence_id", ""),
            "index": index,
        }


def _check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """Buckets as an ascending tuple of distinct positive ints (a ValueError names what is wrong)."""
    checked = [_check_seed("a frame bucket", value) for value in buckets]
    if 0 in checked:
        raise ValueError("frame buckets must be >= 1, got 0")
    if checked != sorted(set(checked)):
        raise ValueError(f"frame buckets must be strictly ascending, got {list(buckets)}")
    return tuple(checked)


def padded_frames(longest: int, buckets: Sequence[int] = ()) -> int:
    """Frames a batch whose longest sequence has ``longest`` frames is padded to: the smallest bucket that
    holds it; with no buckets, or one longer than every bucket, ``longest`` itself."""
    return next((b for b in buckets if b >= longest), longest)


def frame_buckets(buckets: Sequence[int], max_frames: int | None) -> list[int]:
    """Training buckets from the configured ones: those below ``max_frames`` plus ``max_frames`` itself.

    Training sequences are cropped to ``max_frames``, so with this last bucket every batch lands in a bucket
    (the set of batch shapes is finite and known in advance). An empty configuration stays empty (pad each
    batch to its longest sequence); ``max_frames=None`` (no crop) keeps the configured buckets as they are.
    """
    buckets = list(_check_buckets(sorted(set(buckets))))
    if not buckets or max_frames is None:
        return buckets
    return [b for b in buckets if b < max_frames] + [int(max_frames)]


def _stack_item_poses(items: Sequence) -> list[torch.Tensor]:
    """Every item's poses as a float32 tensor, after checking that items are dicts of matching (J, C)."""
    poses = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or "poses" not in item or "label" not in item:
            raise ValueError(f"batch item {i} must be a dict with 'poses' and 'label', got {type(item).__name__}")
        p = torch.as_tensor(item["poses"], dtype=torch.float32)
        if p.dim() != 3 or p.shape[0] < 1:
            raise ValueError(f"batch item {i}: poses must be (T >= 1, J, C), got {tuple(p.shape)}")
        if poses and p.shape[1:] != poses[0].shape[1:]:
            raise ValueError(f"batch item {i}: poses have joints x channels {tuple(p.shape[1:])}, item 0 has "
                             f"{tuple(poses[0].shape[1:])}")
        poses.append(p)
    return poses


def collate_padded(items: Sequence[dict], buckets: Sequence[int] = ()) -> dict:
    """Stack items of different lengths into one padded batch.

    Returns ``poses`` (B, T, J, C) float32 with zeros after each sequence's end, ``lengths`` (B,) long,
    ``labels`` (B,) long, lists ``subjects``, ``views``, ``conditions``, ``sequence_ids``, ``indices``, and
    host ints ``max_length`` (longest real sequence) and ``total_frames`` (sum of the lengths), computed here
    on the CPU so the model can lay out packed frames without reading ``lengths`` back from the GPU.

    ``T`` is the longest sequence when ``buckets`` is empty, else the smallest bucket >= the longest sequence
    (static shapes for compiled graphs); a batch longer than every bucket pads to its own longest. Use
    ``frame_buckets`` to end the buckets at the crop length so that never happens in training.
    """
    items = list(items)
    if not items:
        raise ValueError("collate_padded got an empty batch")
    poses = _stack_item_poses(items)
    buckets = _check_buckets(buckets)  # a few ints: cheap next to the copy below
    sizes = [p.shape[0] for p in poses]
    out = poses[0].new_zeros((len(poses), padded_frames(max(sizes), buckets), *poses[0].shape[1:]))
    for i, p in enumerate(poses):
        out[i, : p.shape[0]] = p
    return {
        "poses": out,
        "lengths": torch.tensor(sizes, dtype=torch.long),
        "max_length": max(sizes),
        "total_frames": sum(sizes),
        "labels": torch.tensor([int(item["label"]) for item in items], dtype=torch.long),
        "subjects": [item.get("subject", "") for item in items],
        "views": [item.get("view", "") for item in items],
        "conditions": [item.get("condition", "") for item in items],
        "sequence_ids": [item.get("sequence_id", "") for item in items],
        "indices": [item.get("index", -1) for item in items],
    }


def collate_to_buckets(buckets: Sequence[int] = ()) -> Callable[[Sequence[dict]], dict]:
    """``collate_padded`` padding to ``buckets`` (checked: ascending positive ints). A ``functools.partial`` of
    a module-level function, not a closure, so DataLoader worker processes can pickle it."""
    return functools.partial(collate_padded, buckets=_check_buckets(buckets))


class IdentityBatchSampler(Sampler):
    """P x K batches for triplet losses: P distinct identities, K sequences each.

    One epoch: the identities are shuffled and cut into groups of P, so every identity appears at least once
    per epoch; the last group, if short, is topped up with other identities drawn at random. Each identity
    contributes K of its sequences, without replacement when it has at least K, else all of them once plus
    random repeats (with replacement). A global batch lists identity by identity (K indices each).
    ``len(sampler)`` = ceil(#identities / P) batches.

    Everything is drawn from ``numpy.random.default_rng([seed, epoch])``: call ``set_epoch`` every epoch; the
    same (labels, P, K, seed, epoch) always give the same batches.
    """

    def __init__(self, labels: Sequence[Hashable], identities_per_batch: int, sequences_per_identity: int,
                 seed: int = 0):
        if isinstance(labels, (torch.Tensor, np.ndarray)):
            labels = labels.tolist()
        labels = list(labels)
        if not labels:
            raise ValueError("IdentityBatchSampler needs at least one label")
        self.p = _check_seed("identities_per_batch", identities_per_batch)
        self.k = _check_seed("sequences_per_identity", sequences_per_identity)
        if self.p < 1 or self.k < 1:
            raise ValueError(f"identities_per_batch and sequences_per_identity must be >= 1, got {self.p} and {self.k}")
        self.seed = _check_seed("seed", seed)
        groups: dict = {}
        for i, label in enumerate(labels):
            groups.setdefault(label, []).append(i)  # identities in order of first appearance
        if len(groups) < self.p:
            raise ValueError(f"identities_per_batch={self.p} but the labels hold only {len(groups)} identities")
        self._groups = [np.asarray(v, dtype=np.int64) for v in groups.values()]
        self.epoch = 0

    @property
    def global_batch_size(self) -> int:
        return self.p * self.k

    @property
    def num_identities(self) -> int:
        return len(self._groups)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _check_seed("epoch", epoch)

    def __len__(self) -> int:
        return math.ceil(len(self._groups) / self.p)

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """Every global batch (all ranks together) of an epoch (default: the current one)."""
        epoch = self.epoch if epoch is None else _check_seed("epoch", epoch)
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self._groups)
        order = rng.permutation(n)
        batches = []
        for b in range(len(self)):
            chosen = order[b * self.p:(b + 1) * self.p]
            if len(chosen) < self.p:
                others = np.setdiff1d(np.arange(n), chosen)
                chosen = np.concatenate([chosen, rng.choice(others, self.p - len(chosen), replace=False)])
            batch = []
            for identity in chosen:
                members = self._groups[identity]
                if len(members) >= self.k:
                    picked = rng.choice(members, self.k, replace=False)
                else:
                    picked = np.concatenate([rng.permutation(members),
                                             rng.choice(members, self.k - len(members), replace=True)])
                batch.extend(int(i) for i in picked)
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.global_batches()

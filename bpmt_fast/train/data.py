"""From a data spec to split datasets and loaders."""
from __future__ import annotations

import hashlib
import typing
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bpmt_fast.data.dataset import IdentityBatchSampler, PoseDataset, collate_to_buckets
from bpmt_fast.data.dataset import frame_buckets  # noqa: F401  (the training loop builds its buckets from here)
from bpmt_fast.data.sequence import LoadReport, PoseSequence
from bpmt_fast.data.splits import (Split, camera_split, closed_set_split, cross_condition_split, gallery_probe,
                                   partition_split, subject_disjoint_split)
from bpmt_fast.data.transforms import (Compose, JointNoise, Mirror, PartMask, PointNoise, RandomMove, ReverseTime,
                                       SpeedChange, TemporalCrop)
from bpmt_fast.eval.inference import evaluation_frames

from .config import AugmentConfig, DataConfig, EvaluationConfig, Protocol
from .distributed import SINGLE, Parallel

PROTOCOLS = typing.get_args(Protocol)  # data.protocol choices


def in_skeleton(sequences: list[PoseSequence], skeleton: str, what: str) -> list[PoseSequence]:
    """`sequences` in data.skeleton: those in another format converted by joint name
    (``bpmt_fast.data.convert``); an impossible conversion is a ValueError naming `what` (the data source), both
    formats and the missing joints."""
    from bpmt_fast.data.convert import convert_sequences

    try:
        return convert_sequences(sequences, skeleton)
    except ValueError as exc:
        raise ValueError(f"{what}: data.skeleton is {skeleton!r}: {exc}") from None


def load_sequences(config: DataConfig) -> tuple[list[PoseSequence], LoadReport]:
    """data.source's sequences, every one in data.skeleton (converted on load when the files hold another)."""
    if config.source == "synthetic":
        from bpmt_fast.data.synthetic import SyntheticGaitConfig, generate_synthetic_dataset

        sequences = generate_synthetic_dataset(SyntheticGaitConfig(**config.synthetic), seed=config.seed)
        report = LoadReport(loaded=len(sequences))
    else:
        from bpmt_fast.data.loaders import load_dataset

        sequences, report = load_dataset(config.source, lenient=config.lenient)
    return in_skeleton(sequences, config.skeleton, f"data.source {config.source!r}"), report


# A synthetic pretraining source is generated with its own seed, so its walkers are not data.source's (synthetic)
# subjects; pose fingerprints would catch a copy anyway (see pretraining_sequences).
PRETRAIN_SYNTHETIC_SEED_OFFSET = 1000


def load_pretrain_source(source: str, config: DataConfig) -> tuple[list[PoseSequence], LoadReport]:
    """One entry of data.pretrain_sources: "synthetic" (the default generator) or SCHEME:PATH, its sequences in
    data.skeleton (converted on load like data.source's)."""
    if source == "synthetic":
        from bpmt_fast.data.synthetic import generate_synthetic_dataset

        sequences = generate_synthetic_dataset(seed=config.seed + PRETRAIN_SYNTHETIC_SEED_OFFSET)
        report = LoadReport(loaded=len(sequences))
    else:
        from bpmt_fast.data.loaders import load_dataset

        sequences, report = load_dataset(source, lenient=config.lenient)
    return in_skeleton(sequences, config.skeleton, f"data.pretrain_sources {source!r}"), report


def pose_fingerprint(poses) -> str:
    """Identity of a pose array (shape and float32 bytes): the same walk under another path or name."""
    array = np.ascontiguousarray(poses, dtype=np.float32)
    return f"{array.shape}:{hashlib.sha1(array.tobytes()).hexdigest()}"


@dataclass
class PretrainingSet:
    sequences: list  # the training split's sequences, then the extra sources' kept ones
    kept: dict  # source -> sequences added
    dropped: dict  # source -> {"held-out": n (a validation / test sequence), "duplicate": n (a training one)}

    def describe(self) -> str:
        if not self.kept:
            return f"pretraining: the {len(self.sequences)} training sequences"
        extra = "; ".join(f"{source}: +{count} (dropped {self.dropped[source]['held-out']} held-out, "
                          f"{self.dropped[source]['duplicate']} duplicates)" for source, count in self.kept.items())
        return f"pretraining: {len(self.sequences)} sequences = training split + {extra}"


def pretraining_sequences(sequences, split: Split, config: DataConfig, load=load_pretrain_source) -> PretrainingSet:
    """The unlabelled set of stages 1 and 2: the training split plus every data.pretrain_sources sequence that is
    not on the split's held-out side.

    A source sequence is dropped when its poses equal those of any validation / test sequence (pose fingerprint:
    the same walk under any path), or, for data.source itself, when its sequence id is a held-out one; one equal to
    a training sequence is a duplicate and dropped too. Sources must use data.skeleton and the same channels."""
    train = [sequences[i] for i in split.train]
    if not config.pretrain_sources:  # nothing to screen: no fingerprints to compute at start-up
        return PretrainingSet(train, {}, {})
    train_ids = set(split.train)
    held_out = [seq for i, seq in enumerate(sequences) if i not in train_ids]
    held_prints = {pose_fingerprint(seq.poses) for seq in held_out}
    held_ids = {seq.sequence_id for seq in held_out if seq.sequence_id}
    train_prints = {pose_fingerprint(seq.poses) for seq in train}
    channels = train[0].poses.shape[-1] if train else None
    result = PretrainingSet(list(train), {}, {})
    for source in config.pretrain_sources:
        loaded, _ = load(source, config)
        # a synthetic source is generated with another seed: same ids as a synthetic data.source, other walkers
        same_source = source != "synthetic" and source.strip() == config.source.strip()
        dropped = {"held-out": 0, "duplicate": 0}
        kept = 0
        for seq in loaded:
            skeleton = getattr(seq, "skeleton", config.skeleton)
            if skeleton != config.skeleton or seq.poses.shape[-1] != channels:
                raise ValueError(f"data.pretrain_sources {source!r}: {seq.sequence_id or seq.source} has skeleton "
                                 f"{skeleton!r} with {seq.poses.shape[-1]} channels; data.source uses "
                                 f"{config.skeleton!r} with {channels}")
            fingerprint = pose_fingerprint(seq.poses)
            if fingerprint in held_prints or (same_source and seq.sequence_id in held_ids):
                dropped["held-out"] += 1
            elif fingerprint in train_prints:
                dropped["duplicate"] += 1
            else:
                train_prints.add(fingerprint)
                result.sequences.append(seq)
                kept += 1
        result.kept[source], result.dropped[source] = kept, dropped
    return result


def _subjects(spec: float) -> int | float:
    """Config subject counts: a value >= 1 is a count (YAML `5` and `5.0` alike), below 1 a fraction."""
    if spec >= 1 and not float(spec).is_integer():
        raise ValueError(f"subject count {spec} must be a whole number (or a fraction below 1)")
    return int(spec) if spec >= 1 else float(spec)


def make_split(sequences, config: DataConfig) -> Split:
    """The split of `config.protocol`, every parameter of that protocol passed on (the config refuses the
    parameters a protocol does not read, see bpmt_fast.train.config)."""
    seed = config.seed
    if config.protocol == "subject-disjoint":
        return subject_disjoint_split(sequences, _subjects(config.test_subjects), _subjects(config.val_subjects),
                                      seed=seed)
    if config.protocol == "closed-set":
        closed = config.closed_set
        return closed_set_split(sequences, val_fraction=closed.val_fraction, test_fraction=closed.test_fraction,
                                seed=seed)
    if config.protocol == "camera":
        camera = config.camera
        # open set: retrieval on unseen subjects; closed set (test_subjects None): every kept subject trains
        test_subjects = _subjects(config.test_subjects) if camera.open_set else None
        val_subjects = _subjects(config.val_subjects) if camera.open_set else 0
        return camera_split(sequences, min_cameras=camera.min_cameras, probe_cameras=camera.probe_cameras,
                            val_cameras=camera.val_cameras, test_subjects=test_subjects, val_subjects=val_subjects,
                            seed=seed)
    if config.protocol == "cross-condition":
        conditions = config.cross_condition
        return cross_condition_split(sequences, gallery_conditions=tuple(conditions.gallery_conditions),
                                     probe_conditions=tuple(conditions.probe_conditions),
                                     test_subjects=_subjects(config.test_subjects),
                                     val_subjects=_subjects(config.val_subjects), seed=seed)
    if config.protocol == "partition":  # the field's published partition file (OpenGait dataset JSON)
        part = config.partition
        return partition_split(sequences, part.file, gallery_types=tuple(part.gallery_types),
                               probe_types={name: tuple(types) for name, types in part.probe_types.items()},
                               probe_list_key=part.probe_list_key, val_subjects=_subjects(config.val_subjects),
                               seed=seed)
    raise ValueError(f"unknown protocol {config.protocol!r}; valid: {', '.join(PROTOCOLS)}")


def augmentation(config: AugmentConfig, skeleton: str):
    """The training augmentations, in AugmentConfig's order; those switched off (0) draw no random numbers."""
    steps = [TemporalCrop(config.crop_min_fraction), SpeedChange(*config.speed)]
    if config.reverse:
        steps.append(ReverseTime(config.reverse))
    if config.mirror:
        steps.append(Mirror(skeleton, probability=config.mirror))
    if config.move:
        steps.append(RandomMove(probability=config.move))
    if config.point_noise:
        steps.append(PointNoise(config.point_noise))
    if config.joint_noise:
        steps.append(JointNoise(config.joint_noise))
    if config.part_mask:
        steps.append(PartMask(skeleton, probability=config.part_mask))
    return Compose(steps)


@dataclass
class Datasets:
    train: PoseDataset  # augmented
    split: Split
    sequences: list
    label_map: dict  # training subjects -> class index (the classifier's classes)
    eval_label_map: dict  # every subject -> an integer label for retrieval metrics
    skeleton: str
    max_frames: int  # frames of an evaluated sequence: the centre crop, or the all-frames cap
    train_gallery: list[int]  # retrieval on as many training subjects as validation has: the generalisation gap
    train_probe: list[int]
    pretrain: PoseDataset | None = None  # stages 1 and 2 (no labels): training split + pretraining sources
    pretraining: PretrainingSet | None = None
    normalisation: str = "hips"
    _subsets: dict = field(default_factory=dict, repr=False)

    def subset(self, indices: list[int], crop: bool = False) -> PoseDataset:
        """Un-augmented view of some sequences (validation / evaluation): the evaluation frames (`max_frames`,
        centred), or with `crop` the centre training-length window (the cheap per-epoch curves). Built once per
        list, so the sequences evaluated every epoch are checked and normalised once."""
        key = (tuple(indices), crop)
        if key not in self._subsets:
            self._subsets[key] = PoseDataset([self.sequences[i] for i in indices], self.skeleton,
                                             max_frames=self.train.max_frames if crop else self.max_frames,
                                             label_map=self.eval_label_map, random_crop=False,
                                             normalisation=self.normalisation)
        return self._subsets[key]


def build_datasets(sequences, split: Split, data: DataConfig, augment: AugmentConfig, seed: int,
                   evaluation: EvaluationConfig | None = None, pretraining: PretrainingSet | None = None) -> Datasets:
    """Training, pretraining and evaluation datasets of a split. `pretraining` (see `pretraining_sequences`)
    defaults to the training split alone; `evaluation.all_frames` evaluates up to `evaluation.max_frames` frames
    instead of the centre `data.max_frames`."""
    train_sequences = [sequences[i] for i in split.train]
    label_map = {subject: i for i, subject in enumerate(sorted({s.subject for s in train_sequences}))}
    mode, transform = data.normalisation, augmentation(augment, data.skeleton)
    train = PoseDataset(train_sequences, data.skeleton, transform=transform, max_frames=data.max_frames,
                        label_map=label_map, seed=seed, normalisation=mode)
    if pretraining is None or not any(pretraining.kept.values()):
        pretrain = train
    else:  # the reconstruction stages read no labels: the dataset's own subject numbering will do
        pretrain = PoseDataset(pretraining.sequences, data.skeleton, transform=transform,
                               max_frames=data.max_frames, seed=seed, normalisation=mode)
    eval_label_map = {subject: i for i, subject in enumerate(sorted({s.subject for s in sequences}))}
    count = len(split.subjects.get("val_gallery", [])) or 5
    chosen = set(np.random.default_rng([seed, 1]).permutation(sorted(label_map))[:count].tolist())
    train_gallery, train_probe = gallery_probe(sequences, [i for i in split.train if sequences[i].subject in chosen])
    eval_frames, _ = evaluation_frames(evaluation, data.max_frames)
    return Datasets(train, split, sequences, label_map, eval_label_map, data.skeleton, eval_frames,
                    train_gallery, train_probe, pretrain, pretraining, mode)


class KeyedItems(Dataset):
    """Training items addressed as (index, batch number, position in the global batch).

    Each item draws its augmentation from ``default_rng([seed, epoch, batch, position])``: what a sequence gets
    depends on where it sits in the global batch, not on which process loads it, so a DDP run sees exactly the
    batches of the single-process run (and a sequence drawn twice in one batch still gets two augmentations).
    """

    def __init__(self, dataset: PoseDataset, epoch: int):
        self.dataset, self.epoch = dataset, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        index, batch, position = key
        return self.dataset.get(index, np.random.default_rng([self.dataset.seed, self.epoch, batch, position]))


def _loader(dataset: Dataset, workers: int, pin_memory: bool, buckets, **batching) -> DataLoader:
    """A DataLoader padding to `buckets`, with `workers` processes (0: the main process) and pinned batches.

    Workers get a copy of the dataset, so its cleaned poses are computed here first (once per dataset) and
    inherited, rather than recomputed by every worker of every per-epoch loader. Workers persist for the
    loader's life, which keeps their prefetch queue full across its batches.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers:
        base = dataset.dataset if isinstance(dataset, KeyedItems) else dataset
        if isinstance(base, PoseDataset):
            base.clean_all()
    return DataLoader(dataset, collate_fn=collate_to_buckets(buckets), num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=workers > 0, **batching)


def keyed_loader(dataset: PoseDataset, global_batches: list[list[int]], epoch: int, parallel: Parallel = SINGLE,
                 *, workers: int = 0, pin_memory: bool = False, buckets: typing.Sequence[int] = ()) -> DataLoader:
    """This rank's slice of every global batch (batches smaller than the world size are skipped).

    Batches pad their frames to `buckets` (see `collate_padded`; `frame_buckets` builds them from the config).
    Items are keyed by position (`KeyedItems`), so `workers` changes where batches are built, never what they
    hold: 0 or N workers give the same batches and augmentations. Pin memory when training on CUDA.
    """
    batches = [parallel.shard([(int(index), number, position) for position, index in enumerate(batch)])
               for number, batch in enumerate(global_batches) if len(batch) >= parallel.world_size]
    return _loader(KeyedItems(dataset, epoch), workers, pin_memory, buckets, batch_sampler=batches)


def shuffled_loader(dataset: PoseDataset, batch_size: int, seed: int, epoch: int, parallel: Parallel = SINGLE,
                    *, workers: int = 0, pin_memory: bool = False, buckets: typing.Sequence[int] = ()) -> DataLoader:
    """Random batches for the reconstruction stages; the order is a function of (seed, epoch) only.
    `workers`, `pin_memory`, `buckets`: see `keyed_loader`."""
    order = np.random.default_rng([seed, epoch]).permutation(len(dataset)).tolist()
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return keyed_loader(dataset, batches, epoch, parallel, workers=workers, pin_memory=pin_memory, buckets=buckets)


def identity_loader(dataset: PoseDataset, identities: int, per_identity: int, seed: int, epoch: int,
                    parallel: Parallel = SINGLE, *, workers: int = 0, pin_memory: bool = False,
                    buckets: typing.Sequence[int] = ()) -> DataLoader:
    """P x K batches (IdentityBatchSampler); the global batch must split evenly over the ranks.
    `workers`, `pin_memory`, `buckets`: see `keyed_loader`."""
    if (identities * per_identity) % parallel.world_size:
        raise ValueError(f"the global batch of {identities} x {per_identity} = {identities * per_identity} sequences "
                         f"does not split evenly over {parallel.world_size} ranks")
    sampler = IdentityBatchSampler(dataset.labels, identities, per_identity, seed=seed)
    return keyed_loader(dataset, sampler.global_batches(epoch), epoch, parallel, workers=workers,
                        pin_memory=pin_memory, buckets=buckets)


def eval_loader(dataset: PoseDataset, batch_size: int = 64, *, workers: int = 0, pin_memory: bool = False,
                buckets: typing.Sequence[int] = ()) -> DataLoader:
    """Batches in dataset order (evaluation: no augmentation, centre crop), padded to `buckets`."""
    return _loader(dataset, workers, pin_memory, buckets, batch_size=batch_size, shuffle=False)


def frame_mask_for(batch: dict, parts: int, ratio: float, seed: int, epoch: int) -> torch.Tensor:
    """`(B, P, T)` masked frames, drawn per sequence from (seed, epoch, dataset index): the same sequence gets
    the same mask whatever batch or process it lands in."""
    poses, lengths = batch["poses"], batch["lengths"]
    masks = []
    for index, length in zip(batch["indices"], lengths.tolist()):
        rng = np.random.default_rng([seed, epoch, int(index)])
        mask = rng.random((parts, poses.shape[1])) < ratio
        mask[:, length:] = False
        masks.append(mask)
    return torch.from_numpy(np.stack(masks))

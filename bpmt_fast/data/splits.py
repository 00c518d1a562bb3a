"""Dataset splits as lists of indices into a list of ``PoseSequence`` (only the labels are read), and split records.

Every function is deterministic given its arguments: all randomness comes from ``numpy.random.default_rng(seed)``
and subjects are visited in sorted order, so the same input list and seed always give the same split. Only
``subject``, ``view``, ``condition``, ``sequence_id`` and ``recording_id`` are read (``partition_split`` also reads
``meta``, see below), so any object with these attributes works (without ``recording_id``, ``sequence_id`` stands
in for it, as in ``PoseSequence``; without ``meta``, an empty one).

A ``Split`` partitions the input: every index is in exactly one of ``train``, ``val``, ``test``, ``gallery``,
``probe`` or ``dropped`` (``dropped`` holds the sequences a protocol leaves out, each function says which).
Closed-set splits fill ``train`` / ``val`` / ``test``; retrieval splits fill ``train`` / ``val`` / ``gallery`` /
``probe``, where ``val`` (subjects unseen in training, for early stopping on retrieval) is itself divided into
``val_gallery`` and ``val_probe`` (``val == sorted(val_gallery + val_probe)``). Every list is sorted ascending.

Recordings: clips cut from one continuous video share a ``recording_id`` (Gait3D: ``<subject>/camid<C>_videoid<V>``)
and look alike far more than two separate walks do. A split that puts such clips on both sides of train / test
flatters the test score, so ``closed_set_split`` divides *recordings*, not clips, and ``camera_split`` divides
cameras (a recording has one camera). The retrieval splits put whole subjects on one side; within a test subject,
gallery and probe may share a recording, as in Gait3D's official per-sequence gallery / probe (see each function).

Subject counts (``test_subjects``, ``val_subjects``): an ``int`` is a number of subjects, a ``float`` in
[0, 1] a fraction of the candidate subjects, rounded half up and at least one when the fraction is positive.
Which subjects: the sorted subject labels are permuted by the seeded generator; the first ones are the test
subjects, the next ones the validation subjects, the rest train. A split that cannot be made (too few subjects,
no training subject left, a missing gallery condition, ...) raises ``ValueError`` naming the problem.

Published partitions (``partition_split``): the subject lists OpenGait ships per dataset
(``datasets/<DATASET>/<DATASET>.json``: ``{"TRAIN_SET": [...], "TEST_SET": [...]}``, Gait3D's also ``PROBE_SET``)
replace the random subject draw, and gallery / probe follow the field's rule for the dataset. Two labels of a
sequence are read beyond the ones above:

* its *type* (``sequence_type``), the OpenGait type folder (``nm-01``, ``bg-02``, OU-MVLP's ``00`` / ``01``):
  ``meta["type"]`` when the record has one (the ``opengait`` loader sets it); else, for a ``sequence_id`` named as
  in CASIA-B, ``SUBJECT-TYPE-NN-VIEW`` (the ``casiab`` GaitGraph CSV and ``pyskl`` loaders: ``001-bg-01-090``),
  ``TYPE-NN`` (``bg-01``); else ``meta["sequence"]`` (the ``oumvlp`` loader: ``00`` / ``01``); else ``condition``;
* its *probe-list key* (``probe_list_key_of``), how OpenGait's ``evaluate_Gait3D`` names a sequence in
  ``PROBE_SET``: ``label-type-view`` (``0002-camid33_videoid2-seq0``), i.e. the first three ``/``-separated parts of
  ``sequence_id`` joined by ``-``. The ``opengait`` loader's ids are ``SUBJECT/TYPE/VIEW[/stem]`` and the
  ``gait3d`` loader's ``<subject>/camid<C>_videoid<V>/seq<S>``, so both give OpenGait's key; a list entry equal
  to the whole ``sequence_id`` matches too.

Split records (``split_record``) name every list's sequences by ``sequence_id``, so a split saved next to a run
can be checked against the data later (``compare_split_records``) and reused exactly when resuming
(``split_from_record``), whatever order the loader returns the sequences in.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bpmt_fast.data.sequence import CASIA_B_NAME

PARTS = ("train", "val", "test", "gallery", "probe")  # with `dropped`, these partition the input


@dataclass
class Split:
    """Named index lists into the input sequence list (see the module docstring for the invariants)."""

    protocol: str
    train: list[int] = field(default_factory=list)
    val: list[int] = field(default_factory=list)
    test: list[int] = field(default_factory=list)  # closed-set only
    gallery: list[int] = field(default_factory=list)  # retrieval only
    probe: list[int] = field(default_factory=list)
    val_gallery: list[int] = field(default_factory=list)  # retrieval: val = val_gallery + val_probe
    val_probe: list[int] = field(default_factory=list)
    probe_by_condition: dict[str, list[int]] = field(default_factory=dict)  # cross_condition / partition
    dropped: list[int] = field(default_factory=list)
    subjects: dict[str, list[str]] = field(default_factory=dict)  # sorted subject labels of each non-empty list
    params: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def parts(self) -> dict[str, list[int]]:
        """The disjoint lists that, with ``dropped``, cover every input index exactly once."""
        return {name: getattr(self, name) for name in PARTS}

    def counts(self) -> dict[str, int]:
        """Number of sequences in each list (zero lists included)."""
        names = PARTS + ("val_gallery", "val_probe", "dropped")
        out = {name: len(getattr(self, name)) for name in names}
        out.update({f"probe/{cond}": len(ix) for cond, ix in self.probe_by_condition.items()})
        return out

    def describe(self) -> str:
        """Human-readable counts of sequences (and subjects) per list, then the notes."""
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        lines = [f"{self.protocol} split ({params})"]
        for name, count in self.counts().items():
            if count or name in PARTS[:1]:
                subjects = self.subjects.get(name)
                who = f", {len(subjects)} subjects" if subjects is not None else ""
                lines.append(f"  {name}: {count} sequences{who}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ helpers


def _check_sequences(sequences, fn: str) -> None:
    if len(sequences) == 0:
        raise ValueError(f"{fn}: no sequences")


def _by_subject(sequences) -> dict[str, list[int]]:
    """Subject -> its indices (ascending), subjects in sorted order."""
    groups: dict[str, list[int]] = {}
    for i, seq in enumerate(sequences):
        groups.setdefault(seq.subject, []).append(i)
    return {subject: groups[subject] for subject in sorted(groups)}


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5 + 1e-9))


def _num_subjects(spec, total: int, name: str, fn: str) -> int:
    if isinstance(spec, bool) or not isinstance(spec, (int, float, np.integer, np.floating)):
        raise ValueError(f"{fn}: {name} must be an int (count) or a float in [0, 1] (fraction), got {spec!r}")
    if isinstance(spec, (int, np.integer)):
        if not 0 <= spec <= total:
            raise ValueError(f"{fn}: {name}={spec} but there are {total} candidate subjects")
        return int(spec)
    if not 0.0 <= spec <= 1.0:
        raise ValueError(f"{fn}: {name}={spec} is not a fraction in [0, 1]")
    return max(1, _round_half_up(spec * total)) if spec > 0 else 0


def _choose_subjects(subjects: list[str], test_spec, val_spec, rng, fn: str, require_train: bool = True):
    """Permute the (sorted) candidate subjects: first the test subjects, then val; returns (test, val) sets."""
    num_test = _num_subjects(test_spec, len(subjects), "test_subjects", fn)
    num_val = _num_subjects(val_spec, len(subjects), "val_subjects", fn)
    if num_test == 0:
        raise ValueError(f"{fn}: test_subjects={test_spec!r} selects no test subject")
    if num_test + num_val > len(subjects) - (1 if require_train else 0):
        raise ValueError(f"{fn}: {num_test} test + {num_val} validation subjects out of {len(subjects)} "
                         f"candidates leaves no training subject")
    permuted = [subjects[i] for i in rng.permutation(len(subjects))]
    return set(permuted[:num_test]), set(permuted[num_test:num_test + num_val])


def _sort_key(sequences, i: int):
    return (str(sequences[i].sequence_id), i)


def _one_per_view(indices: list[int], sequences) -> list[bool]:
    """Gallery mask: in each view, the sequence with the smallest (sequence_id, index) goes to the gallery."""
    chosen = {}
    for i in sorted(indices, key=lambda i: _sort_key(sequences, i)):
        chosen.setdefault(sequences[i].view, i)
    keep = set(chosen.values())
    return [i in keep for i in indices]


GalleryRule = str | Callable[[list], Sequence[bool]]


def _gallery_mask(subject: str, indices: list[int], sequences, rule: GalleryRule, gallery_condition: str,
                  fn: str, notes: list[str]) -> list[bool]:
    if callable(rule):
        mask = [bool(m) for m in rule([sequences[i] for i in indices])]
        if len(mask) != len(indices):
            raise ValueError(f"{fn}: gallery_rule returned {len(mask)} flags for subject {subject!r} "
                             f"with {len(indices)} sequences")
        return mask
    by_condition = [sequences[i].condition == gallery_condition for i in indices]
    if rule == "condition":
        if not any(by_condition):
            raise ValueError(f"{fn}: subject {subject!r} has no {gallery_condition!r} sequence for the gallery "
                             f"(gallery_rule='condition'; use 'auto' to fall back to one sequence per view)")
        return by_condition
    if rule == "one_per_view":
        return _one_per_view(indices, sequences)
    if rule == "auto":
        if any(by_condition):
            return by_condition
        if any(sequences[i].condition for i in indices):
            notes.append(f"subject {subject!r} has no {gallery_condition!r} sequence: gallery = one per view")
        return _one_per_view(indices, sequences)
    raise ValueError(f"{fn}: unknown gallery_rule {rule!r}: expected 'auto', 'condition', 'one_per_view' "
                     f"or a callable")


def _finish(split: Split, sequences) -> Split:
    """Sort every list, record the subjects of each list, and check the partition invariant."""
    for name in PARTS + ("val_gallery", "val_probe", "dropped"):
        setattr(split, name, sorted(getattr(split, name)))
    split.probe_by_condition = {c: sorted(ix) for c, ix in split.probe_by_condition.items() if ix}
    for name in PARTS + ("val_gallery", "val_probe"):
        indices = getattr(split, name)
        if indices:
            split.subjects[name] = sorted({sequences[i].subject for i in indices})
    assigned = sorted(i for name in PARTS + ("dropped",) for i in getattr(split, name))
    assert assigned == list(range(len(sequences))), "internal error: split is not a partition"
    return split


def gallery_probe(sequences, indices: Sequence[int], gallery_rule: GalleryRule = "auto",
                  gallery_condition: str = "nm") -> tuple[list[int], list[int]]:
    """Divide some sequences into gallery / probe per subject with the protocols' gallery rule (used to measure
    retrieval on training subjects, next to the validation subjects). Like ``subject_disjoint_split``, it works per
    sequence: gallery and probe may hold clips of one recording."""
    groups: dict = {}
    for i in indices:
        groups.setdefault(sequences[i].subject, []).append(i)
    gallery, probe, notes = [], [], []
    for subject, members in groups.items():
        mask = _gallery_mask(subject, members, sequences, gallery_rule, gallery_condition, "gallery_probe", notes)
        gallery += [i for i, m in zip(members, mask) if m]
        probe += [i for i, m in zip(members, mask) if not m]
    return sorted(gallery), sorted(probe)


# ----------------------------------------------------------------------------------------------- protocols


def _recordings(indices: list[int], sequences) -> list[list[int]]:
    """A subject's indices grouped by ``recording_id``, groups in sorted recording order. A clip without one (empty
    ``recording_id``) is its own group, placed by index; sorting by id makes the split independent of input order."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i in indices:
        recording = str(getattr(sequences[i], "recording_id", sequences[i].sequence_id) or "")
        groups.setdefault((recording, -1) if recording else ("", i), []).append(i)
    return [groups[key] for key in sorted(groups)]


def _closed_set_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, bool]:
    """(test, val) recordings of a subject with n recordings, and whether it falls short of its full share."""
    num_test, num_val = _round_half_up(n * test_fraction), _round_half_up(n * val_fraction)
    wanted = (num_test, num_val)
    while num_test + num_val > n - 1:  # train keeps at least one recording; val gives up first
        if num_val:
            num_val -= 1
        else:
            num_test -= 1
    short = (num_test, num_val) != wanted or (test_fraction > 0 and num_test == 0)
    return num_test, num_val, short


def _fewest_recordings_for_test(test_fraction: float) -> int:
    """The smallest number of recordings that gives a subject a test recording (for the error message)."""
    n = 2
    while _closed_set_counts(n, 0.0, test_fraction)[0] == 0:
        n += 1
    return n


def closed_set_split(sequences, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Closed-set identification: every subject in train; each subject's *recordings* divided train/val/test.

    A subject's clips are grouped by ``recording_id`` (a clip with an empty one is its own recording) and every clip
    follows its recording, so no recording is on two sides. For a subject with n recordings (sorted, then permuted
    by the seeded generator): ``n_test = round_half_up(n * test_fraction)``, ``n_val = round_half_up(n *
    val_fraction)``, then train keeps at least one recording: while ``n_test + n_val > n - 1``, val gives one up
    first, then test. So a subject with a single recording is train-only, and small subjects may have no val/test
    recording (counted in ``notes``). Nothing is dropped. With one clip per recording this is a split by clip.
    """
    fn = "closed_set_split"
    _check_sequences(sequences, fn)
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{fn}: {name}={value} is not in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"{fn}: val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training data")
    rng = np.random.default_rng(seed)
    split = Split("closed_set", params={"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed})
    short = num_recordings = 0
    for indices in _by_subject(sequences).values():
        recordings = _recordings(indices, sequences)
        num_recordings += len(recordings)
        num_test, num_val, is_short = _closed_set_counts(len(recordings), val_fraction, test_fraction)
        short += is_short
        for rank, k in enumerate(rng.permutation(len(recordings))):
            side = split.test if rank < num_test else split.val if rank < num_test + num_val else split.train
            side += recordings[k]
    if test_fraction > 0 and not split.test:
        raise ValueError(f"{fn}: no subject has enough recordings for a test set at test_fraction={test_fraction} "
                         f"(it takes {_fewest_recordings_for_test(test_fraction)}; clips of one recording stay on "
                         f"one side)")
    if short:
        split.notes.append(f"{short} subjects have too few recordings for their full val/test share")
    if num_recordings < len(sequences):
        split.notes.append(f"{len(sequences)} sequences in {num_recordings} recordings: each recording's clips "
                           f"stay on one side")
    return _finish(split, sequences)


def subject_disjoint_split(sequences, test_subjects: int | float = 0.5, val_subjects: int | float = 0,
                           seed: int = 0, gallery_rule: GalleryRule = "auto",
                           gallery_condition: str = "nm") -> Split:
    """Open-set retrieval: train / val / test subjects disjoint; test (and val) divided into gallery and probe.

    ``gallery_rule`` decides, per test or validation subject, which of its sequences form the gallery (the rest
    are probes):

    * ``"auto"`` (default): the subject's ``gallery_condition`` ("nm") sequences; when it has none (e.g. the
      dataset has no conditions), one sequence per view: in each view, the one with the smallest
      ``(sequence_id, index)``.
    * ``"condition"``: the ``gallery_condition`` sequences; a subject without one is an error.
    * ``"one_per_view"``: one sequence per view as above, conditions ignored.
    * a callable: gets the subject's ``PoseSequence`` list, returns one bool per sequence (True = gallery).

    A subject whose sequences all land in the gallery simply has no probe. Nothing is dropped.

    Recordings: train, val and test subjects are disjoint, so no recording is in training and evaluation. Within a
    test (validation) subject the gallery rule works per sequence, so gallery and probe may hold clips of one
    recording (with ``"one_per_view"`` on Gait3D-style data, the gallery clip's siblings become probes). That is
    what Gait3D's official protocol does (gallery / probe chosen per sequence); with condition galleries (CASIA-B,
    PsyMo) each walk is its own recording and the question does not arise. For probes from recordings the gallery
    never saw, use ``camera_split``.
    """
    fn = "subject_disjoint_split"
    _check_sequences(sequences, fn)
    groups = _by_subject(sequences)
    rng = np.random.default_rng(seed)
    test, val = _choose_subjects(list(groups), test_subjects, val_subjects, rng, fn)
    split = Split("subject_disjoint", params={"test_subjects": test_subjects, "val_subjects": val_subjects,
                                              "seed": seed, "gallery_rule": getattr(gallery_rule, "__name__",
                                                                                    gallery_rule)})
    for subject, indices in groups.items():
        if subject not in test and subject not in val:
            split.train += indices
            continue
        mask = _gallery_mask(subject, indices, sequences, gallery_rule, gallery_condition, fn, split.notes)
        gallery, probe = (split.gallery, split.probe) if subject in test else (split.val_gallery, split.val_probe)
        gallery += [i for i, m in zip(indices, mask) if m]
        probe += [i for i, m in zip(indices, mask) if not m]
    split.val = split.val_gallery + split.val_probe
    return _finish(split, sequences)


def camera_split(sequences, min_cameras: int = 3, probe_cameras: int = 1, val_cameras: int = 0,
                 test_subjects: int | float | None = None, val_subjects: int | float = 0,
                 seed: int = 0) -> Split:
    """The BPMT seed protocol on Gait3D: subjects seen by >= ``min_cameras`` cameras, split by camera.

    Cameras are ``PoseSequence.view``. Subjects seen by fewer than ``min_cameras`` distinct cameras are dropped
    (all their sequences go to ``dropped``). For each kept subject, the seeded generator permutes its sorted
    camera list; the first ``probe_cameras`` cameras are *held out*, the next ``val_cameras`` are validation
    cameras, and every other camera (at least one) is *kept*. Then:

    * ``test_subjects=None`` (closed set, unseen cameras): sequences of kept cameras -> ``train``, of held-out
      cameras -> ``test``, of validation cameras -> ``val``. Every kept subject is in train and in test.
    * ``test_subjects`` given (open set, unseen people): the kept subjects are divided train / val / test as in
      ``subject_disjoint_split``; training subjects put all their sequences in ``train``; for test (validation)
      subjects, kept cameras -> ``gallery`` (``val_gallery``) and held-out cameras -> ``probe``
      (``val_probe``). ``val_cameras`` must be 0 here.

    Every probe's camera is thus absent from its subject's gallery / training cameras. A recording is filmed by one
    camera, so its clips always share a side: no recording is in train and test, or in gallery and probe (given
    that the clips of a recording carry the same ``view``, as the loaders set it).
    """
    fn = "camera_split"
    _check_sequences(sequences, fn)
    if probe_cameras < 1 or val_cameras < 0 or probe_cameras + val_cameras > min_cameras - 1:
        raise ValueError(f"{fn}: need probe_cameras >= 1, val_cameras >= 0 and probe_cameras + val_cameras <= "
                         f"min_cameras - 1 (one camera must stay on the train/gallery side); got probe_cameras="
                         f"{probe_cameras}, val_cameras={val_cameras}, min_cameras={min_cameras}")
    if test_subjects is not None and val_cameras:
        raise ValueError(f"{fn}: val_cameras is for the closed-set mode; with test_subjects use val_subjects")
    unknown = sum(not seq.view for seq in sequences)
    if unknown:
        raise ValueError(f"{fn}: {unknown} sequences have no camera id (empty PoseSequence.view)")
    groups = _by_subject(sequences)
    cameras = {s: sorted({sequences[i].view for i in ix}) for s, ix in groups.items()}
    kept = [s for s in groups if len(cameras[s]) >= min_cameras]
    if not kept:
        most = max(len(c) for c in cameras.values())
        raise ValueError(f"{fn}: no subject is seen by >= {min_cameras} cameras (the most is {most})")
    rng = np.random.default_rng(seed)
    split = Split("camera", params={"min_cameras": min_cameras, "probe_cameras": probe_cameras,
                                    "val_cameras": val_cameras, "test_subjects": test_subjects,
                                    "val_subjects": val_subjects, "seed": seed})
    test, val = set(), set()
    if test_subjects is not None:
        test, val = _choose_subjects(kept, test_subjects, val_subjects, rng, fn)
    for subject, indices in groups.items():
        if subject not in kept:
            split.dropped += indices
            continue
        if test_subjects is not None and subject not in test and subject not in val:
            split.train += indices
            continue
        order = [cameras[subject][i] for i in rng.permutation(len(cameras[subject]))]
        held_out, val_cams = set(order[:probe_cameras]), set(order[probe_cameras:probe_cameras + val_cameras])
        if test_subjects is None:
            sides = (split.train, split.val, split.test)
        elif subject in test:
            sides = (split.gallery, None, split.probe)
        else:
            sides = (split.val_gallery, None, split.val_probe)
        for i in indices:
            camera = sequences[i].view
            side = 2 if camera in held_out else 1 if camera in val_cams else 0
            sides[side].append(i)
    if test_subjects is not None:
        split.val = split.val_gallery + split.val_probe
    num_dropped_subjects = len(groups) - len(kept)
    if num_dropped_subjects:
        split.notes.append(f"dropped {num_dropped_subjects} subjects seen by fewer than {min_cameras} cameras "
                           f"({len(split.dropped)} sequences)")
    return _finish(split, sequences)


def cross_condition_split(sequences, gallery_conditions: Sequence[str] = ("nm",),
                          probe_conditions: Sequence[str] = ("bg", "cl", "ph", "txt", "wsf", "wss"),
                          test_subjects: int | float = 0.5, val_subjects: int | float = 0,
                          seed: int = 0) -> Split:
    """PsyMo protocol: subject-disjoint train/test; on test subjects gallery = ``gallery_conditions``, each
    ``probe_conditions`` condition is a probe set (``probe_by_condition``; ``probe`` is their union).

    Test and validation subjects are drawn (see the module docstring) from the *candidate* subjects: those with
    at least one gallery-condition and one probe-condition sequence; every other subject trains. Training
    subjects put all their sequences in ``train`` (whatever the condition). Test / validation sequences whose
    condition is in neither list are dropped (counted in ``notes``). Validation subjects are divided the same
    way into ``val_gallery`` / ``val_probe``.

    Recordings: train and test subjects are disjoint; gallery and probe are split by condition, and in PsyMo (as in
    CASIA-B) each sequence is a separate walk, so a recording never spans gallery and probe. Data whose recordings
    mixed conditions would put one recording on both sides; this function does not prevent it.
    """
    fn = "cross_condition_split"
    _check_sequences(sequences, fn)
    gallery_conditions, probe_conditions = tuple(gallery_conditions), tuple(probe_conditions)
    if not gallery_conditions or not probe_conditions:
        raise ValueError(f"{fn}: gallery_conditions and probe_conditions must not be empty")
    overlap = set(gallery_conditions) & set(probe_conditions)
    if overlap:
        raise ValueError(f"{fn}: conditions {sorted(overlap)} are both gallery and probe conditions")
    groups = _by_subject(sequences)
    present = {s: {sequences[i].condition for i in ix} for s, ix in groups.items()}
    candidates = [s for s in groups
                  if present[s] & set(gallery_conditions) and present[s] & set(probe_conditions)]
    if not candidates:
        seen = sorted(set().union(*present.values()))
        raise ValueError(f"{fn}: no subject has both a gallery condition {list(gallery_conditions)} and a probe "
                         f"condition {list(probe_conditions)}; conditions present: {seen}")
    rng = np.random.default_rng(seed)
    test, val = _choose_subjects(candidates, test_subjects, val_subjects, rng, fn, require_train=False)
    if not set(groups) - test - val:
        raise ValueError(f"{fn}: the test and validation subjects leave no training subject")
    split = Split("cross_condition", params={"gallery_conditions": gallery_conditions,
                                             "probe_conditions": probe_conditions, "test_subjects": test_subjects,
                                             "val_subjects": val_subjects, "seed": seed})
    split.probe_by_condition = {c: [] for c in probe_conditions}
    for subject, indices in groups.items():
        if subject not in test and subject not in val:
            split.train += indices
            continue
        gallery, probe = (split.gallery, split.probe) if subject in test else (split.val_gallery, split.val_probe)
        for i in indices:
            condition = sequences[i].condition
            if condition in gallery_conditions:
                gallery.append(i)
            elif condition in probe_conditions:
                probe.append(i)
                if subject in test:
                    split.probe_by_condition[condition].append(i)
            else:
                split.dropped.append(i)
    split.val = split.val_gallery + split.val_probe
    if split.dropped:
        split.notes.append(f"dropped {len(split.dropped)} test/validation sequences of other conditions")
    return _finish(split, sequences)


# ------------------------------------------------------------------------------------------ published partitions

PARTITION_SETS = ("TRAIN_SET", "TEST_SET")  # the subject lists of an OpenGait dataset partition


def sequence_type(seq) -> str:
    """The OpenGait type of a sequence (``nm-01``, ``bg-02``, ``00``): see the module docstring for the rule."""
    meta = getattr(seq, "meta", None) or {}
    if meta.get("type"):
        return str(meta["type"])
    casia_b = CASIA_B_NAME.match(str(getattr(seq, "sequence_id", "") or ""))
    if casia_b:
        return f"{casia_b['type']}-{casia_b['number']}"
    if meta.get("sequence"):
        return str(meta["sequence"])
    return str(getattr(seq, "condition", "") or "")


def probe_list_key_of(seq) -> str:
    """How a probe list names the sequence: OpenGait's ``label-type-view`` (see the module docstring)."""
    return "-".join(str(seq.sequence_id).split("/")[:3])


def _load_partition(partition, fn: str) -> tuple[str, object]:
    """(a name for messages, the parsed JSON or the mapping itself)."""
    if isinstance(partition, Mapping):
        return "the partition mapping", partition
    if not isinstance(partition, (str, os.PathLike)):
        raise ValueError(f"{fn}: partition must be a JSON file path or a mapping, got {type(partition).__name__}")
    if not str(partition).strip():
        raise ValueError(f"{fn}: no partition file given (an OpenGait dataset partition such as "
                         f"datasets/CASIA-B/CASIA-B.json)")
    path = Path(partition)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (a relative path is read from the working directory {os.getcwd()})"
        raise ValueError(f"{fn}: partition file {path} not found{where}")
    try:
        return str(partition), json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{fn}: {path} is not valid JSON: {error.msg} (line {error.lineno}, column "
                         f"{error.colno})") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{fn}: {path} is not UTF-8 text ({error.reason})") from None


def _id_list(raw: Mapping, key: str, name: str, what: str, fn: str) -> list[str]:
    if key not in raw:
        keys = ", ".join(map(str, raw)) or "none"
        raise ValueError(f"{fn}: {name} has no {key!r} list of {what} (an OpenGait partition is "
                         f'{{"TRAIN_SET": [...], "TEST_SET": [...]}}; its keys: {keys})')
    values = raw[key]
    if not isinstance(values, list):
        raise ValueError(f"{fn}: {name}: {key!r} must be a list of {what}, got {type(values).__name__}")
    for position, value in enumerate(values):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{fn}: {name}: {key}[{position}] is {value!r}, not a non-empty string ({what} are "
                             f"strings, as the folder names they match)")
    return values


def read_partition(partition, probe_list_key: str | None = None) -> dict[str, list[str]]:
    """An OpenGait dataset partition, checked: ``partition`` is a JSON file path (relative to the working
    directory) or an already-parsed mapping. Returns ``{"TRAIN_SET": [...], "TEST_SET": [...]}`` plus
    ``probe_list_key``'s list when given. ValueError naming the file and the problem for a missing or non-JSON
    file, a value that is not a JSON object, a missing list, a non-string entry, or subjects in both sets."""
    fn = "read_partition"
    name, raw = _load_partition(partition, fn)
    return _partition_lists(raw, name, probe_list_key, fn)


def _partition_lists(raw, name: str, probe_list_key: str | None, fn: str) -> dict[str, list[str]]:
    if not isinstance(raw, Mapping):
        raise ValueError(f'{fn}: {name} is a JSON {type(raw).__name__}, not an OpenGait partition (an object '
                         f'{{"TRAIN_SET": [subject ids], "TEST_SET": [subject ids]}})')
    lists = {key: _id_list(raw, key, name, "subject ids", fn) for key in PARTITION_SETS}
    both = sorted(set(lists["TRAIN_SET"]) & set(lists["TEST_SET"]))
    if both:
        raise ValueError(f"{fn}: {name}: {_plural(len(both), 'subject')} in both TRAIN_SET and TEST_SET: "
                         f"{_sample(both)}")
    if probe_list_key is not None:
        if probe_list_key in PARTITION_SETS:
            raise ValueError(f"{fn}: probe_list_key {probe_list_key!r} names a subject list, not a list of probe "
                             f"sequences (Gait3D's is 'PROBE_SET')")
        lists[probe_list_key] = _id_list(raw, probe_list_key, name, "sequence names", fn)
    return lists


def _digest(lists: dict[str, list[str]]) -> str:
    """What the split read from the partition, order-free: a changed file shows as a params change."""
    text = json.dumps({key: sorted(set(values)) for key, values in lists.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_types(gallery_types: tuple, probe_types: dict[str, tuple], fn: str) -> None:
    if not gallery_types or not probe_types:
        raise ValueError(f"{fn}: give gallery_types and probe_types (e.g. CASIA-B: gallery nm-01..nm-04, probe sets "
                         f"NM: nm-05/06, BG: bg-01/02, CL: cl-01/02), or a probe list (probe_list_key / "
                         f"probe_sequences)")
    owner = {t: "gallery_types" for t in gallery_types}
    if len(owner) < len(gallery_types):
        raise ValueError(f"{fn}: gallery_types lists a type more than once: {list(gallery_types)}")
    for group, types in probe_types.items():
        if not types:
            raise ValueError(f"{fn}: probe set {group!r} has no type")
        for type_ in types:
            if type_ in owner:
                raise ValueError(f"{fn}: type {type_!r} is in {owner[type_]} and in probe set {group!r}")
            owner[type_] = f"probe set {group!r}"


def partition_split(sequences, partition, gallery_types: Sequence[str] = (),
                    probe_types: Mapping[str, Sequence[str]] | None = None, probe_list_key: str | None = None,
                    probe_sequences: Sequence[str] | None = None, val_subjects: int | float = 0,
                    seed: int = 0) -> Split:
    """A published partition (OpenGait's ``datasets/<DATASET>/<DATASET>.json``) with the field's gallery / probe.

    ``partition``: the JSON file (a path, relative to the working directory) or its parsed mapping, checked by
    ``read_partition``. Every sequence of a ``TRAIN_SET`` subject trains (all its types); ``val_subjects`` (a count
    or fraction, see the module docstring) of the ``TRAIN_SET`` subjects present in the data are drawn with the
    seeded generator for validation instead (0: none). ``TEST_SET`` subjects are divided into gallery and probe
    in one of two ways:

    * by type (``sequence_type``): ``gallery_types`` -> ``gallery``; each probe set of ``probe_types`` (name ->
      types, e.g. ``{"NM": ["nm-05", "nm-06"], "BG": ["bg-01", "bg-02"], "CL": ["cl-01", "cl-02"]}``) ->
      ``probe`` and ``probe_by_condition[name]``; test sequences of any other type are dropped. Validation
      subjects are divided the same way (``val_gallery`` / ``val_probe``).
    * by a probe list (Gait3D): ``probe_list_key`` names a list in the partition (``"PROBE_SET"``), or
      ``probe_sequences`` gives one; a test sequence whose ``probe_list_key_of`` key (or whole ``sequence_id``)
      is listed is a probe, every other test sequence is in the gallery. ``probe_by_condition`` stays empty.
      Validation subjects get one probe each (as Gait3D's list has one per test subject), drawn with the seeded
      generator from the subject's sequences in ``sequence_id`` order; a validation subject with a single
      sequence has only a gallery sequence.

    Sequences of subjects in neither set are dropped. Never silent (``notes``): partition subjects missing from
    the data, data subjects in neither set, dropped test sequences and their types, probe-list entries that match
    no sequence, keys of the file that were not read, empty probe sets. ValueError naming the problem for: a
    partition that is not the JSON shape, subjects in both sets, both or neither of the two gallery / probe
    ways, a type in two places, no training sequence, no gallery or no probe, a probe-list entry naming a
    sequence of a subject outside ``TEST_SET``.

    Recordings: train, validation and test subjects are disjoint. By type, each type is its own walk (CASIA-B,
    OU-MVLP), so gallery and probe share no recording; by probe list, gallery and probe may hold clips of one
    recording, exactly as Gait3D's official evaluation has it.
    """
    fn = "partition_split"
    _check_sequences(sequences, fn)
    gallery_types = tuple(gallery_types)
    probe_types = {str(group): tuple(types) for group, types in (probe_types or {}).items()}
    if probe_list_key is not None and probe_sequences is not None:
        raise ValueError(f"{fn}: give probe_list_key (a list in the partition) or probe_sequences, not both")
    by_list = probe_list_key is not None or probe_sequences is not None
    if by_list and (gallery_types or probe_types):
        raise ValueError(f"{fn}: give gallery_types / probe_types or a probe list, not both (with a probe list the "
                         f"gallery is every other test sequence)")
    name, raw = _load_partition(partition, fn)
    if not by_list:
        _check_types(gallery_types, probe_types, fn)
    lists = _partition_lists(raw, name, probe_list_key, fn)
    if probe_sequences is not None:
        if isinstance(probe_sequences, str):
            raise ValueError(f"{fn}: probe_sequences must be a list of sequence names, not one string")
        lists["probe_sequences"] = _id_list({"probe_sequences": list(probe_sequences)}, "probe_sequences",
                                            "probe_sequences", "sequence names", fn)
    train_set, test_set = set(lists["TRAIN_SET"]), set(lists["TEST_SET"])
    split = Split("partition", params={"partition": name, "partition_sha256": _digest(lists),
                                       "gallery_types": gallery_types, "probe_types": probe_types,
                                       "probe_list_key": probe_list_key,
                                       "probe_sequences": None if probe_sequences is None else len(probe_sequences),
                                       "val_subjects": val_subjects, "seed": seed})
    notes = split.notes
    unread = [str(key) for key in raw if key not in lists]
    if unread:
        notes.append(f"not read from {name}: {', '.join(unread)}")
    for key in PARTITION_SETS:
        repeated = sorted(sid for sid, count in Counter(lists[key]).items() if count > 1)
        if repeated:
            notes.append(f"{key} lists {_plural(len(repeated), 'subject')} more than once: {_sample(repeated)}")

    groups = {str(subject): indices for subject, indices in _by_subject(sequences).items()}
    for key, members in (("TRAIN_SET", train_set), ("TEST_SET", test_set)):
        missing = sorted(members - set(groups))
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            notes.append(f"{len(missing)} of the {len(members)} {key} subjects {verb} not in the data: "
                         f"{_sample(missing)}")
    outside = sorted(set(groups) - train_set - test_set)
    if outside:
        notes.append(f"{_plural(len(outside), 'subject')} of the data in neither TRAIN_SET nor TEST_SET: "
                     f"{_sample(outside)}; their {_plural(sum(len(groups[s]) for s in outside), 'sequence')} "
                     f"dropped")
    candidates = [s for s in groups if s in train_set]
    if not candidates:
        raise ValueError(f"{fn}: no training sequence: none of the {len(train_set)} TRAIN_SET subjects of {name} "
                         f"is in the data (data subjects: {_sample(list(groups))})")
    rng = np.random.default_rng(seed)
    num_val = _num_subjects(val_subjects, len(candidates), "val_subjects", fn)
    if num_val >= len(candidates):
        raise ValueError(f"{fn}: val_subjects={val_subjects!r} takes {num_val} of the {len(candidates)} TRAIN_SET "
                         f"subjects in the data: no training subject left")
    val = {candidates[i] for i in rng.permutation(len(candidates))[:num_val]}

    probes: set[str] = set()
    named: set[int] = set()  # by probe list: the indices of the listed sequences
    type_group: dict[str, str] = {}  # probe type -> its probe set
    if by_list:
        probes = set(lists[probe_list_key if probe_sequences is None else "probe_sequences"])
        keyed = {i: (probe_list_key_of(seq), str(seq.sequence_id)) for i, seq in enumerate(sequences)}
        named = {i for i, keys in keyed.items() if keys[0] in probes or keys[1] in probes}
        wrong = sorted({str(sequences[i].subject) for i in named} - test_set)
        if wrong:
            raise ValueError(f"{fn}: the probe list names sequences of {_plural(len(wrong), 'subject')} outside "
                             f"TEST_SET: {_sample(wrong)}")
        matched = {key for i in named for key in keyed[i]}
        unmatched = sorted(probes - matched)
        if unmatched:
            notes.append(f"{len(unmatched)} of the {len(probes)} probe-list entries name no sequence of the data: "
                         f"{_sample(unmatched)}")
    else:
        split.probe_by_condition = {group: [] for group in probe_types}
        type_group.update({t: group for group, types in probe_types.items() for t in types})
    other_types: Counter = Counter()
    val_other = 0
    for subject, indices in groups.items():
        if subject in train_set and subject not in val:
            split.train += indices
        elif subject not in train_set and subject not in test_set:
            split.dropped += indices
        elif by_list and subject in test_set:
            for i in indices:
                (split.probe if i in named else split.gallery).append(i)
        elif by_list:  # a validation subject: one probe drawn, the rest gallery
            ordered = sorted(indices, key=lambda i: _sort_key(sequences, i))
            chosen = ordered[int(rng.integers(len(ordered)))] if len(ordered) > 1 else None
            for i in ordered:
                (split.val_probe if i == chosen else split.val_gallery).append(i)
        else:
            test = subject in test_set
            for i in indices:
                type_ = sequence_type(sequences[i])
                if type_ in gallery_types:
                    (split.gallery if test else split.val_gallery).append(i)
                elif type_ in type_group:
                    (split.probe if test else split.val_probe).append(i)
                    if test:
                        split.probe_by_condition[type_group[type_]].append(i)
                else:
                    split.dropped.append(i)
                    if test:
                        other_types[type_] += 1
                    else:
                        val_other += 1
    split.val = split.val_gallery + split.val_probe

    test_types = sorted({sequence_type(sequences[i]) for s in test_set & set(groups) for i in groups[s]})
    if not split.gallery or not split.probe:
        side = "gallery" if not split.gallery else "probe"
        if by_list and side == "probe":
            sample = _sample(sorted(probes), 2)
            data_keys = _sample(sorted(probe_list_key_of(sequences[i]) for s in test_set & set(groups)
                                       for i in groups[s]), 2)
            data_keys = data_keys or "nothing: no TEST_SET subject is in the data"
            raise ValueError(f"{fn}: no probe: none of the {len(probes)} probe-list entries ({sample}) names a "
                             f"sequence of a TEST_SET subject (whose keys, sequence_id parts joined by '-', look "
                             f"like {data_keys})")
        if by_list:
            raise ValueError(f"{fn}: no gallery: every test sequence is on the probe list")
        wanted = list(gallery_types) if side == "gallery" else [t for ts in probe_types.values() for t in ts]
        present = _sample(test_types, 12) or "none, no TEST_SET subject is in the data"
        raise ValueError(f"{fn}: no {side}: no sequence of a TEST_SET subject has a {side} type {wanted} (types of "
                         f"the test subjects' sequences: {present})")
    for group, members in split.probe_by_condition.items():
        if not members:
            notes.append(f"probe set {group}: no test sequence of its types {list(probe_types[group])}")
    if other_types:
        shown = _sample([f"{t} ({n})" for t, n in sorted(other_types.items())])
        notes.append(f"dropped {_plural(sum(other_types.values()), 'test sequence')} of neither a gallery nor a probe "
                     f"type: {shown}")
    if val_other:
        notes.append(f"dropped {_plural(val_other, 'validation sequence')} of neither a gallery nor a probe type")
    return _finish(split, sequences)


# ---------------------------------------------------------------------------------------------- split records

RECORD_VERSION = 1
RECORD_LISTS = PARTS + ("val_gallery", "val_probe", "dropped")  # every index list a record names
_RECORD_KEYS = ("protocol", "params", "num_sequences", "sequences", "lists", "probe_by_condition", "subjects")
_SHOWN = 5  # long lists in messages: the first few names, then a count


def _sample(items, shown: int = _SHOWN) -> str:
    """'a, b, c' or 'a, b, c, d, e and 12 more': keeps messages about large datasets readable."""
    items = [str(item) for item in items]
    head = ", ".join(items[:shown])
    return f"{head} and {len(items) - shown} more" if len(items) > shown else head


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _sequence_ids(sequences, fn: str) -> list[str]:
    """The sequence ids, which a record uses as names: each must be non-empty and unique."""
    ids = [str(seq.sequence_id or "") for seq in sequences]
    empty = [i for i, sid in enumerate(ids) if not sid]
    if empty:
        raise ValueError(f"{fn}: {_plural(len(empty), 'sequence')} without a sequence_id (indices {_sample(empty)}); "
                         f"a split record names sequences by id")
    duplicates = sorted(sid for sid, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ValueError(f"{fn}: {_plural(len(duplicates), 'sequence id')} used more than once: {_sample(duplicates)}; "
                         f"a split record could not tell those sequences apart")
    return ids


def _jsonable(value):
    """Params as JSON values: tuples become lists, numpy scalars Python numbers, callables their name (not their
    repr, whose address would differ every run and show as a change)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return getattr(value, "__qualname__", None) or repr(value)


def _check_record(record, fn: str, which: str = "record") -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{fn}: the {which} is a {type(record).__name__}, not a split record (a dict)")
    missing = [key for key in _RECORD_KEYS if key not in record]
    missing += [f"lists.{name}" for name in RECORD_LISTS if name not in record.get("lists", {})]
    if missing:
        raise ValueError(f"{fn}: the {which} is not a split record: missing {', '.join(missing)}")


def split_record(split: Split, sequences) -> dict:
    """A JSON-friendly record of ``split`` that names sequences by id, to save next to a run.

    Keys: ``version``, ``protocol``, ``params``, ``num_sequences``, ``sequences`` (every sequence id, sorted: the
    data's fingerprint), ``lists`` (for each of ``RECORD_LISTS``, the sorted ids in it), ``probe_by_condition``
    (condition -> sorted ids), ``subjects`` (for each of ``RECORD_LISTS``, its sorted subjects) and ``notes``.
    ``sequences`` must be the list the split was made from; ids must be unique and non-empty (else ValueError).
    """
    fn = "split_record"
    ids = _sequence_ids(sequences, fn)
    assigned = sorted(i for name in PARTS + ("dropped",) for i in getattr(split, name))
    if assigned != list(range(len(sequences))):
        raise ValueError(f"{fn}: the split does not partition these {len(sequences)} sequences "
                         f"(was it made from another list?)")

    def named(indices):
        return sorted(ids[i] for i in indices)

    return {
        "version": RECORD_VERSION,
        "protocol": split.protocol,
        "params": {str(key): _jsonable(value) for key, value in split.params.items()},
        "num_sequences": len(ids),
        "sequences": sorted(ids),
        "lists": {name: named(getattr(split, name)) for name in RECORD_LISTS},
        "probe_by_condition": {str(c): named(ix) for c, ix in split.probe_by_condition.items()},
        "subjects": {name: sorted({str(sequences[i].subject) for i in getattr(split, name)})
                     for name in RECORD_LISTS},
        "notes": [str(note) for note in split.notes],
    }


def split_from_record(record: dict, sequences) -> Split:
    """The saved split as a ``Split`` of index lists into ``sequences`` (any order), to resume with exactly it.

    Every sequence the record names must be in the data (else ValueError naming the missing ids). Sequences of the
    data that the record does not name (added since) go to ``dropped``, with a note: a resumed run keeps its split.
    ``compare_split_records`` says what changed.
    """
    fn = "split_from_record"
    _check_record(record, fn)
    ids = _sequence_ids(sequences, fn)
    index = {sid: i for i, sid in enumerate(ids)}
    owner: dict[str, str] = {}  # id -> the one part (or dropped) that holds it
    for name in PARTS + ("dropped",):
        for sid in record["lists"][name]:
            if sid in owner:
                raise ValueError(f"{fn}: sequence {sid!r} is in both {owner[sid]} and {name}; not a valid split record")
            owner[sid] = name
    named = set(record["sequences"]) | set(owner)
    for name in ("val_gallery", "val_probe"):
        named.update(record["lists"][name])
    for members in record["probe_by_condition"].values():
        named.update(members)
    missing = sorted(named - set(index))
    if missing:
        raise ValueError(f"{fn}: {_plural(len(missing), 'sequence')} of the saved split missing from the data: "
                         f"{_sample(missing)}")
    split = Split(str(record["protocol"]), params=dict(record["params"]), notes=list(record.get("notes", [])))
    for name in RECORD_LISTS:
        setattr(split, name, [index[sid] for sid in record["lists"][name]])
    split.probe_by_condition = {c: [index[sid] for sid in members]
                                for c, members in record["probe_by_condition"].items()}
    new = [i for i, sid in enumerate(ids) if sid not in owner]
    if new:
        split.dropped += new
        split.notes.append(f"{_plural(len(new), 'sequence')} not in the saved split left out: "
                           f"{_sample(sorted(ids[i] for i in new))}")
    return _finish(split, sequences)


def _membership(record: dict) -> dict[str, str]:
    """Sequence id -> the lists holding it, e.g. 'val+val_probe' or 'probe+probe/bg'."""
    out: dict[str, list[str]] = {}
    for name in RECORD_LISTS:
        for sid in record["lists"][name]:
            out.setdefault(sid, []).append(name)
    for condition, members in record["probe_by_condition"].items():
        for sid in members:
            out.setdefault(sid, []).append(f"probe/{condition}")
    return {sid: "+".join(names) for sid, names in out.items()}


def _subject_sides(record: dict) -> dict[str, str]:
    """Subject -> the parts (or dropped) holding its sequences, e.g. 'train' or 'gallery+probe'."""
    out: dict[str, list[str]] = {}
    for name in PARTS + ("dropped",):
        for subject in record["subjects"][name]:
            out.setdefault(subject, []).append(name)
    return {subject: "+".join(names) for subject, names in out.items()}


def _param_changes(saved: dict, current: dict) -> list[str]:
    absent = object()
    lines = []
    for key in sorted(set(saved) | set(current)):
        before, after = saved.get(key, absent), current.get(key, absent)
        if before != after:
            show = [("(absent)" if value is absent else repr(value)) for value in (before, after)]
            lines.append(f"params changed: {key} {show[0]} -> {show[1]}")
    return lines


def _added_and_removed(saved: set, current: set, what: str, hints: tuple[str, str]) -> list[str]:
    lines = []
    added, removed = sorted(current - saved), sorted(saved - current)
    if added:
        verb = "is" if len(added) == 1 else "are"
        lines.append(f"{_plural(len(added), what)} in the data {verb} not in the saved split: {_sample(added)}"
                     f"{hints[0]}")
    if removed:
        verb = "is" if len(removed) == 1 else "are"
        lines.append(f"{_plural(len(removed), what)} of the saved split {verb} missing from the data: "
                     f"{_sample(removed)}{hints[1]}")
    return lines


def _moves(saved: dict[str, str], current: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, saved place, current place) for every name in both whose place differs, sorted by name."""
    return [(name, saved[name], current[name]) for name in sorted(set(saved) & set(current))
            if saved[name] != current[name]]


def compare_split_records(saved: dict, current: dict) -> list[str]:
    """What differs between a saved split record and the current one, one readable line per change (empty when
    they match): format, protocol and params changes, sequences and subjects added to or missing from the data,
    subjects that moved between parts (first few, then a count) and sequences that changed lists.
    """
    fn = "compare_split_records"
    _check_record(saved, fn, "saved record")
    _check_record(current, fn, "current record")
    lines = []
    if saved.get("version") != current.get("version"):
        lines.append(f"record format changed: {saved.get('version')} -> {current.get('version')}")
    if saved["protocol"] != current["protocol"]:
        lines.append(f"protocol changed: {saved['protocol']} -> {current['protocol']}")
    lines += _param_changes(saved["params"], current["params"])
    lines += _added_and_removed(set(saved["sequences"]), set(current["sequences"]), "sequence",
                                (" (added files or a new subject folder?)", " (files removed or renamed?)"))
    saved_sides, current_sides = _subject_sides(saved), _subject_sides(current)
    lines += _added_and_removed(set(saved_sides), set(current_sides), "subject", ("", ""))
    moved = _moves(saved_sides, current_sides)
    lines += [f"subject {subject} moved from {before} to {after}" for subject, before, after in moved[:_SHOWN]]
    if len(moved) > _SHOWN:
        lines.append(f"... and {len(moved) - _SHOWN} more subjects moved")
    changed = _moves(_membership(saved), _membership(current))
    if changed:
        shown = [f"{sid} ({before} -> {after})" for sid, before, after in changed]
        lines.append(f"{_plural(len(changed), 'sequence')} changed lists: {_sample(shown)}")
    return lines

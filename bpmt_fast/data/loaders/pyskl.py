"""PYSKL / mmaction2 skeleton annotation pickles (``pyskl:FILE.pkl``; a folder of ``.pkl`` files works too).

Layout: one pickle holding ``{"split": {name: [frame_dir, ...]}, "annotations": [annotation, ...]}``, or a bare
list of annotations (older mmaction2 files). An annotation is a dict::

    {"frame_dir": "001-bg-01-090", "label": 0, "keypoint": (M, T, V, 2 or 3) float,
     "keypoint_score": (M, T, V) float (optional), "total_frames": T, "img_shape": (h, w), ...}

M person slots, T frames, V keypoints; V picks the skeleton (17 COCO-17, 18 OpenPose-18, 25 BODY_25, 26 Halpe-26).
Channels: with ``keypoint_score``, ``keypoint`` is (x, y) or (x, y, z) and the score is the confidence; without
it, a third ``keypoint`` channel is the confidence (it must lie in [0, 1.5]: 3-D coordinates without scores are
refused rather than read as confidences) and (x, y) alone get confidence 1. Other keys are not read.

Labels: ``sequence_id`` = ``frame_dir``; ``subject`` = ``str(label)`` (the identity, for a gait dataset), view and
condition empty, ``recording`` = ``frame_dir``. A ``frame_dir`` named as in CASIA-B, ``SUBJECT-TYPE-NN-VIEW``
(``001-bg-01-090``), gives subject ``001``, condition ``bg``, view ``090`` and recording ``001-bg-01`` (the views of
one walk together): **the name wins over the label**, since the label of CASIA-B PYSKL files is a class index
(subject 001 -> label 0), not the subject's name. ``meta``: ``label``, ``split`` (the sorted names of the splits
listing this frame_dir, [] if none), ``img_shape`` when given, ``num_persons`` (M). Frame times are the frame
indices 0..T-1 of the kept frames.

Person selection (M > 1)
------------------------
PYSKL keeps M person slots per frame, but a slot is not the same person from frame to frame: extraction scripts
sort each frame's detections by score, so slot 0 is whoever scored best in that frame (a bystander at times).
The walker is therefore tracked, not read from a slot, with the tracklet rule of ``alphapose`` (its module
docstring): every person with a keypoint of confidence > 0 in a frame is a candidate, with the bounding box of
its keypoints of confidence > 0 and the mean keypoint confidence as score; candidates are linked frame to frame
by box overlap (IoU >= 0.3, gaps up to 5 frames) into tracklets; the tracklet with the largest total score is the
walker's (ties: earliest start, then creation order; within a frame, candidates are ranked by score, then slot);
tracklets that do not overlap it in time and look like it (similar mean score and height) repair its breaks.
One person per frame; frames where the walker has no detection are dropped (their indices are missing from
``frame_times``). The same rule runs for M = 1, where a slot can also change person.

Bad data: the file is read with ``bpmt_fast.data.safe_pickle`` (never ``pickle.load``). A file that is not a pickle
of this structure (not a dict with an ``annotations`` list or a list; a malformed ``split``) is one bad unit, named
by its path. Each annotation is its own unit: a missing key, a wrong type or shape, non-finite values, a
``total_frames`` that is not T or a frame_dir seen before makes it bad (strict: DataError naming the file and the
frame_dir; lenient: skipped and recorded). Split entries naming no annotation and unknown top-level keys go to
``LoadReport.ignored``, as do stray files when a folder is given.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from bpmt_fast.data.loaders._common import Context, build_sequence, find_files, load_files, progress
from bpmt_fast.data.loaders.alphapose import Detection, select_walker
from bpmt_fast.data.safe_pickle import UnsafePickleError, load_pickle
from bpmt_fast.data.sequence import CASIA_B_NAME, DataError, LoadReport, PoseSequence
from bpmt_fast.model.skeleton import format_with_joints

TOP_LEVEL_KEYS = ("split", "annotations")
MAX_SCORE = 1.5  # a score channel beyond this is not a confidence (3-D coordinates without scores)


def person_detections(people: np.ndarray, frames: Sequence[int]) -> list[Detection]:
    """Tracking candidates from ``people`` (M, T, V, D): slot m of frame index t (frame number ``frames[t]``)
    when one of its keypoints has confidence (last channel) > 0; box = the bounding box (x, y) of those keypoints,
    score = the mean confidence over all keypoints, order = the slot (ranks equal scores in a frame)."""
    conf = people[..., -1]
    visible = conf > 0
    xy = people[..., :2].astype(np.float64)
    lo = np.where(visible[..., None], xy, np.inf).min(axis=-2)
    hi = np.where(visible[..., None], xy, -np.inf).max(axis=-2)
    score = conf.astype(np.float64).mean(axis=-1)
    slots, times = np.nonzero(visible.any(axis=-1))
    return [Detection(int(frames[t]), people[m, t], float(score[m, t]),
                      (float(lo[m, t, 0]), float(lo[m, t, 1]), float(hi[m, t, 0] - lo[m, t, 0]),
                       float(hi[m, t, 1] - lo[m, t, 1])), int(m))
            for m, t in zip(slots.tolist(), times.tolist())]


def walker_poses(dets: list[Detection], joints: int, channels: int) -> tuple[np.ndarray, list[int]]:
    """The walker's (T', V, D) poses and frame numbers (``select_walker``); empty when there is no candidate."""
    track = select_walker(dets)
    if not track:
        return np.zeros((0, joints, channels), np.float32), []
    return np.stack([d.keypoints for d in track]).astype(np.float32), [d.frame for d in track]


def _top_level(data) -> tuple[list, dict[str, list[str]], list[str]]:
    """(annotations, split, unknown top-level keys) of the unpickled object; ValueError when malformed."""
    if isinstance(data, list):
        return data, {}, []
    if not isinstance(data, dict):
        raise ValueError(f"expected a PYSKL annotation dict {{'split': ..., 'annotations': [...]}} or a list of "
                         f"annotations, got {type(data).__name__}")
    if "annotations" not in data:
        raise ValueError(f"a PYSKL annotation dict needs an 'annotations' list; keys: "
                         f"{', '.join(map(repr, list(data)[:10]))}")
    annotations = data["annotations"]
    if not isinstance(annotations, list):
        raise ValueError(f"'annotations' must be a list of dicts, got {type(annotations).__name__}")
    split = data.get("split", {})
    if split is None:
        split = {}
    if not isinstance(split, dict):
        raise ValueError(f"'split' must be a dict {{name: [frame_dir, ...]}}, got {type(split).__name__}")
    for name, dirs in split.items():
        if not isinstance(name, str) or not isinstance(dirs, (list, tuple)) \
                or not all(isinstance(d, str) for d in dirs):
            raise ValueError(f"'split' entry {str(name)[:40]!r} must map a name to a list of frame_dir strings")
    return annotations, {name: list(dirs) for name, dirs in split.items()}, \
        [str(k) for k in data if k not in TOP_LEVEL_KEYS]


def _array(ann: dict, key: str, ndim: int) -> np.ndarray:
    value = ann[key]
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu" or value.ndim != ndim:
        got = f"{value.dtype} array {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise ValueError(f"{key!r} must be a {ndim}-d numeric array, got {got}")
    with np.errstate(all="ignore"):  # values beyond float32 become inf and are reported as non-finite
        array = value.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"non-finite values (NaN/inf) in {key!r}")
    return array


def _int(value) -> int | None:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iu":
        return int(value)
    return None


def parse_annotation(ann) -> tuple[int, np.ndarray, str]:
    """(label, poses (M, T, V, D) float32 with the confidence last, skeleton); ValueError with the reason."""
    for key in ("label", "keypoint"):
        if key not in ann:
            raise ValueError(f"missing key {key!r}")
    label = _int(ann["label"])
    if label is None:
        raise ValueError(f"'label' must be an integer, got {str(ann['label'])[:40]!r}")
    keypoint = _array(ann, "keypoint", 4)
    persons, frames, joints, channels = keypoint.shape
    if channels not in (2, 3) or persons < 1:
        raise ValueError(f"'keypoint' must be (M >= 1 persons, T frames, V keypoints, 2 or 3), got {keypoint.shape}")
    skeleton = format_with_joints(joints).name
    total = ann.get("total_frames")
    if total is not None and _int(total) != frames:
        raise ValueError(f"'total_frames' is {str(total)[:20]} but 'keypoint' has {frames} frames")
    if ann.get("keypoint_score") is not None:
        score = _array(ann, "keypoint_score", 3)
        if score.shape != keypoint.shape[:3]:
            raise ValueError(f"'keypoint_score' must be (M, T, V) = {keypoint.shape[:3]}, got {score.shape}")
        poses = np.concatenate([keypoint, score[..., None]], axis=-1)
    elif channels == 3:
        low, high = float(keypoint[..., 2].min(initial=0.0)), float(keypoint[..., 2].max(initial=0.0))
        if low < 0 or high > MAX_SCORE:
            raise ValueError(f"no 'keypoint_score' and the third keypoint channel (read as the score) runs from "
                             f"{low:g} to {high:g}, not a confidence in [0, 1] (3-D keypoints need a keypoint_score)")
        poses = keypoint
    else:
        poses = np.concatenate([keypoint, np.ones_like(keypoint[..., :1])], axis=-1)
    return label, poses, skeleton


def _labels(frame_dir: str, label: int) -> dict:
    m = CASIA_B_NAME.match(frame_dir)
    if m:
        return dict(subject=m["subject"], condition=m["type"].lower(), view=m["view"],
                    recording=f"{m['subject']}-{m['type']}-{m['number']}")
    return dict(subject=str(label), condition="", view="", recording=frame_dir)


def _load_annotation(ann, index: int, path: Path, ctx: Context, splits_of: dict[str, list[str]],
                     seen: dict[str, str]) -> PoseSequence | None:
    frame_dir = ann.get("frame_dir") if isinstance(ann, dict) else None
    if not isinstance(frame_dir, str) or not frame_dir:
        reason = "not a dict" if not isinstance(ann, dict) else "no 'frame_dir' string"
        ctx.fail(f"{path}: annotation {index}", reason)
        return None
    where = f"{path}: {frame_dir}"
    if frame_dir in seen:
        ctx.fail(where, f"frame_dir already loaded from {seen[frame_dir]}")
        return None
    try:
        label, poses, skeleton = parse_annotation(ann)
    except ValueError as exc:
        ctx.fail(where, str(exc))
        return None
    persons, frames, joints, channels = poses.shape
    dets = person_detections(poses, range(frames))
    walker, times = walker_poses(dets, joints, channels)
    meta = {"label": label, "split": splits_of.get(frame_dir, []), "num_persons": persons}
    shape = ann.get("img_shape")
    if isinstance(shape, (tuple, list)) and len(shape) == 2 and all(_int(v) is not None for v in shape):
        meta["img_shape"] = (_int(shape[0]), _int(shape[1]))
    seq = build_sequence(ctx, walker, times, where=where, skeleton=skeleton, sequence_id=frame_dir,
                         source=str(path), meta=meta, **_labels(frame_dir, label))
    if seq is not None:
        seen[frame_dir] = str(path)
    return seq


def load_pyskl_file(path: Path, ctx: Context | None = None, seen: dict[str, str] | None = None) -> list[PoseSequence]:
    """Every annotation of one PYSKL pickle (see the module docstring); [] when the file is skipped (lenient)."""
    ctx = ctx or Context()
    seen = {} if seen is None else seen
    try:
        annotations, split, unknown = _top_level(load_pickle(path))
    except (ValueError, DataError) as exc:  # DataError (unreadable, refused) is a ValueError too
        if isinstance(exc, UnsafePickleError) and not ctx.lenient:
            raise  # strict: the refusal keeps its own type
        ctx.fail(path, str(exc).removeprefix(f"{path}: "))
        return []
    for key in unknown:
        ctx.ignore(f"{path}: key {key[:40]!r}", f"not a PYSKL annotation key ({', '.join(TOP_LEVEL_KEYS)})")
    splits_of: dict[str, list[str]] = {}
    for name in sorted(split):
        for frame_dir in dict.fromkeys(split[name]):
            splits_of.setdefault(frame_dir, []).append(name)
    out = []
    for index, ann in enumerate(progress(annotations, "pyskl", unit="annotation")):
        seq = _load_annotation(ann, index, path, ctx, splits_of, seen)
        if seq is not None:
            out.append(seq)
    annotated = {ann.get("frame_dir") for ann in annotations if isinstance(ann, dict)}
    for name in sorted(split):
        absent = [d for d in dict.fromkeys(split[name]) if d not in annotated]
        if absent:
            ctx.ignore(f"{path}: split {name[:40]!r}", f"{len(absent)} frame_dir(s) with no annotation, e.g. "
                                                       f"{absent[0][:60]!r}")
    return out


def load_pyskl(path: str | os.PathLike, *, lenient: bool = False,
               report: LoadReport | None = None) -> tuple[list[PoseSequence], LoadReport]:
    """Load one PYSKL annotation pickle, or every ``*.pkl`` under a folder; see the module docstring."""
    ctx = Context(lenient, report)
    path = Path(path)
    files = find_files(path, ".pkl", "PYSKL .pkl", ctx)
    seen: dict[str, str] = {}
    return load_files(files, "pyskl", lambda f: load_pyskl_file(f, ctx, seen), ctx), ctx.report

"""Joint-format conversion between the skeleton formats of ``bpmt_fast.model.skeleton``, by joint name.

Rule: each joint of the target format is copied from the source joint of the same name (names are shared across
formats, see ``bpmt_fast.model.skeleton``). Two joints may be synthesised when the source lacks them:

* ``neck`` = midpoint of ``left_shoulder`` and ``right_shoulder``;
* ``mid_hip`` = midpoint of ``left_hip`` and ``right_hip``;

with confidence = the smaller of the two confidences. When either of the two is missing (confidence 0) the
synthesised joint is missing too: coordinates 0, confidence 0. Any other target joint the source lacks makes
the conversion impossible: ``ValueError`` naming the source, the target and the missing joints.

What converts (rows: source, columns: target; "=" same format, a copy)::

                 coco17   openpose18   openpose25            halpe26
    coco17         =         yes       no (6 foot joints)    no (head, 6 foot joints)
    openpose18    yes         =        no (6 foot joints)    no (head, 6 foot joints)
    openpose25    yes        yes           =                 no (head)
    halpe26       yes        yes          yes                    =

Poses are ``(..., J, C)`` arrays, usually ``(T, J, C)``, with C = 3 (x, y, confidence) or 4 (x, y, z,
confidence); the last channel is the confidence. The result is a new float array; the input is never changed.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Iterable

import numpy as np

from bpmt_fast.data.sequence import PoseSequence
from bpmt_fast.model.skeleton import SkeletonFormat, get_format

__all__ = ["SYNTHESISED", "conversion_plan", "convert_poses", "convert_sequence", "convert_sequences"]

# target joints a source may lack: built as the midpoint of a left/right pair
SYNTHESISED: dict[str, tuple[str, str]] = {
    "neck": ("left_shoulder", "right_shoulder"),
    "mid_hip": ("left_hip", "right_hip"),
}


@lru_cache(maxsize=None)
def _plan(source: SkeletonFormat, target: SkeletonFormat) -> tuple[np.ndarray, tuple[tuple[int, int, int], ...]]:
    names = source.joint_names
    copy = np.full(target.num_joints, -1, dtype=np.int64)
    mids, missing = [], []
    for k, name in enumerate(target.joint_names):
        if name in names:
            copy[k] = names.index(name)
        elif name in SYNTHESISED and all(n in names for n in SYNTHESISED[name]):
            left, right = SYNTHESISED[name]
            mids.append((k, names.index(left), names.index(right)))
        else:
            missing.append(name)
    if missing:
        raise ValueError(f"cannot convert skeleton format {source.name!r} to {target.name!r}: {source.name} has no "
                         f"{', '.join(missing)} ({len(missing)} joint{'s' if len(missing) > 1 else ''} missing; only "
                         f"{' and '.join(SYNTHESISED)} can be built, from the shoulders / hips)")
    return copy, tuple(mids)


def conversion_plan(source: str | SkeletonFormat, target: str | SkeletonFormat) -> list[tuple[str, tuple[int, ...]]]:
    """How each target joint is made, in target order: ``("copy", (i,))`` from source joint i, or
    ``("mid", (i, j))`` the midpoint of source joints i and j. ValueError when the conversion is impossible."""
    copy, mids = _plan(get_format(source), get_format(target))
    plan: list[tuple[str, tuple[int, ...]]] = [("copy", (int(i),)) for i in copy]
    for k, a, b in mids:
        plan[k] = ("mid", (a, b))
    return plan


def convert_poses(poses, source: str | SkeletonFormat, target: str | SkeletonFormat) -> np.ndarray:
    """`poses` (..., J, C) in `source` format -> the same poses in `target` format (rule in the module docstring).

    Same format: a copy. ValueError when the joint count is not the source format's, C is not 3 or 4, or the
    target needs a joint the source cannot give."""
    source, target = get_format(source), get_format(target)
    poses = np.asarray(poses)
    if poses.ndim < 2 or poses.shape[-1] not in (3, 4):
        raise ValueError(f"poses must be (..., joints, 3 or 4) (x, y[, z], confidence), got shape {poses.shape}")
    if poses.shape[-2] != source.num_joints:
        raise ValueError(f"poses have {poses.shape[-2]} joints, but skeleton format {source.name!r} has "
                         f"{source.num_joints} (shape {poses.shape})")
    dtype = poses.dtype if poses.dtype.kind == "f" else np.float32
    if source == target:
        return poses.astype(dtype, copy=True)
    copy, mids = _plan(source, target)
    out = np.zeros(poses.shape[:-2] + (target.num_joints, poses.shape[-1]), dtype=dtype)
    copied = copy >= 0
    out[..., copied, :] = poses[..., copy[copied], :]
    for k, a, b in mids:
        conf = np.minimum(poses[..., a, -1], poses[..., b, -1])
        present = conf > 0
        mid = (poses[..., a, :-1].astype(np.float64) + poses[..., b, :-1]) / 2
        out[..., k, :-1] = np.where(present[..., None], mid, 0)
        out[..., k, -1] = np.where(present, conf, 0)
    return out


def convert_sequence(seq: PoseSequence, target: str | SkeletonFormat) -> PoseSequence:
    """A new PoseSequence with the poses in `target` format and ``skeleton`` set to its name; every other field
    is kept (``frame_times`` and ``meta`` copied). ValueError naming the sequence when it cannot be converted."""
    target = get_format(target)
    try:
        poses = convert_poses(seq.poses, seq.skeleton, target)
    except ValueError as exc:
        raise ValueError(f"{seq.sequence_id or seq.source or 'sequence'}: {exc}") from None
    return dataclasses.replace(seq, poses=poses, skeleton=target.name, frame_times=np.array(seq.frame_times),
                               meta=dict(seq.meta))


def convert_sequences(sequences: Iterable[PoseSequence], target: str | SkeletonFormat) -> list[PoseSequence]:
    """Every sequence in `target` format: those already in it are returned as they are (no copy), the others
    through `convert_sequence`. ValueError (naming the sequence, both formats and the missing joints) at the first
    one that cannot be converted."""
    target = get_format(target)
    return [seq if get_format(seq.skeleton).name == target.name else convert_sequence(seq, target) for seq in sequences]

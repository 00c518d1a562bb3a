"""A non-learned reference for gait recognition: hand-made pose statistics + 1-nearest-neighbour.

``pose_statistics`` turns one pose sequence into a fixed-length feature vector (normalised mean pose, pose
variability, bone lengths, joint speeds); ``reference_retrieval`` ranks a gallery for each probe by Euclidean
distance between gallery-z-scored features and scores it under the named field protocols of
``bpmt_fast.eval.metrics``. It is a floor that learned models must beat and the tool used to tune the difficulty
of the synthetic dataset (``bpmt_fast.data.synthetic``).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from ..model.skeleton import SkeletonFormat, get_format

__all__ = ["pose_statistics", "reference_features", "reference_retrieval", "reference_rank1", "zscore_by_gallery"]


def _nan_stat(fn, x: np.ndarray, axis: int) -> np.ndarray:
    """A nan-aware reduction that returns nan (without warnings) where a slice is all nan."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(x, axis=axis)


def pose_statistics(poses: np.ndarray, skeleton: str | SkeletonFormat = "coco17") -> np.ndarray:
    """(T, J, C) poses -> (F,) float64 features, F = 2 J D + B + 2 J (D = C - 1 coordinates, B bones; 118 for
    COCO-17 in 2D).

    The last channel is the confidence; joints with confidence <= 0 are ignored (nan-aware statistics).
    Every frame is centred on its hip midpoint and the sequence scaled by its median torso length (shoulder
    midpoint to hip midpoint), so the features are invariant to translation and scale of the input. Features,
    in order: mean (J*D) and std (J*D) of normalised joint positions, mean bone lengths (B, ``skeleton.bones``),
    mean (J) and std (J) of joint speeds (norm of frame-to-frame differences, consecutive frames assumed).
    Features that cannot be computed (e.g. a joint never seen) are nan.
    """
    fmt = get_format(skeleton)
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1] != fmt.num_joints or poses.shape[2] < 3:
        raise ValueError(f"pose_statistics: poses must be (T, {fmt.num_joints}, C >= 3) for {fmt.name}, "
                         f"got {poses.shape}")
    xy = np.where(poses[..., -1:] > 0, poses[..., :-1], np.nan)  # (T, J, D), nan = missing
    hip = xy[:, list(fmt.hips)].mean(axis=1)  # (T, D), nan unless both hips are seen
    shoulder = xy[:, list(fmt.shoulders)].mean(axis=1)
    torso = np.linalg.norm(shoulder - hip, axis=-1)  # (T,)
    scale = np.nanmedian(torso) if np.isfinite(torso).any() else np.nan
    if not scale > 0:
        scale = np.nan
    norm = (xy - hip[:, None]) / scale  # (T, J, D)
    t, j, d = norm.shape

    pos_mean = _nan_stat(np.nanmean, norm, 0).reshape(-1)  # (J*D,)
    pos_std = _nan_stat(np.nanstd, norm, 0).reshape(-1)
    parent, child = np.array(fmt.bones).T
    bones = _nan_stat(np.nanmean, np.linalg.norm(norm[:, child] - norm[:, parent], axis=-1), 0)  # (B,)
    speed = np.linalg.norm(np.diff(norm, axis=0), axis=-1) if t > 1 else np.full((1, j), np.nan)  # (T-1, J)
    speed_mean = _nan_stat(np.nanmean, speed, 0)
    speed_std = _nan_stat(np.nanstd, speed, 0)
    return np.concatenate([pos_mean, pos_std, bones, speed_mean, speed_std])


def zscore_by_gallery(gallery: np.ndarray, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-score `(N, F)` gallery and `(M, F)` probe features with the gallery's mean and std; nan features and
    features constant over the gallery become 0 (they carry no evidence)."""
    mean = _nan_stat(np.nanmean, gallery, 0)
    std = _nan_stat(np.nanstd, gallery, 0)
    std = np.where(np.isfinite(std) & (std > 1e-12), std, np.inf)  # constant / unknown features -> 0 after z
    return np.nan_to_num((gallery - mean) / std, nan=0.0), np.nan_to_num((probe - mean) / std, nan=0.0)


def reference_features(gallery: Sequence, probes: Sequence) -> tuple[dict, dict]:
    """Gallery and probe retrieval sets (``features`` z-scored by the gallery, ``labels`` = subjects, ``views``,
    ``conditions``) of two ``PoseSequence`` lists, as ``bpmt_fast.eval.metrics.evaluate_retrieval`` takes them."""
    def features(seqs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-missing joints: nan statistics, neutral after z
            feats = np.stack([pose_statistics(s.poses, s.skeleton) for s in seqs])
        return {"features": feats, "labels": np.array([s.subject for s in seqs]),
                "views": np.array([s.view for s in seqs]), "conditions": np.array([s.condition for s in seqs])}

    gallery_set, probe_set = features(gallery), features(probes)
    gallery_set["features"], probe_set["features"] = zscore_by_gallery(gallery_set["features"], probe_set["features"])
    return gallery_set, probe_set


def reference_retrieval(gallery: Sequence, probes: Sequence, protocols: Sequence[str] = ("cross-view",),
                        **options) -> dict:
    """Euclidean (or ``metric=``) 1-NN on ``reference_features``, scored under the named field protocols
    (``bpmt_fast.eval.metrics.evaluate_retrieval``; ``options``: metric, ranks): ``{"all": {protocol: result},
    <condition>: ...}``."""
    from .metrics import evaluate_retrieval

    gallery_set, probe_set = reference_features(gallery, probes)
    return evaluate_retrieval(probe_set, gallery_set, protocols=protocols, **options)


def reference_rank1(sequences: Sequence, gallery_condition: str = "nm", protocol: str = "cross-view") -> float:
    """Rank-1 of the pose-statistics 1-NN reference with gallery = the ``gallery_condition`` sequences and probes =
    the rest, under a named protocol: ``cross-view`` (CASIA-B: each probe view against each other gallery view,
    the identical view excluded) or ``gait3d`` (nothing excluded: the probe's own view may match)."""
    gallery = [s for s in sequences if s.condition == gallery_condition]
    probes = [s for s in sequences if s.condition != gallery_condition]
    if not gallery or not probes:
        raise ValueError(f"reference_rank1: need gallery ({gallery_condition!r}) and probe sequences, got "
                         f"{len(gallery)} and {len(probes)}")
    return reference_retrieval(gallery, probes, (protocol,))["all"][protocol]["rank1"]

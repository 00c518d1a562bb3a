"""A non-learned reference for gait recognition: hand-made pose statistics + 1-nearest-neighbour.

``pose_statistics`` turns one pose sequence into a fixed-length feature vector (normalised mean pose, pose
variability, bone lengths, joint speeds); ``nearest_neighbour_rank1`` scores probes against a gallery with
Euclidean 1-NN on gallery-z-scored features. It is a floor that learned models must beat and the tool used to
tune the difficulty of the synthetic dataset (``bpmt_fast.data.synthetic``). Full retrieval metrics live
elsewhere.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from ..model.skeleton import SkeletonFormat, get_format

__all__ = ["pose_statistics", "nearest_neighbour_rank1", "reference_rank1"]


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


def nearest_neighbour_rank1(gallery_feats: np.ndarray, gallery_labels: Sequence, probe_feats: np.ndarray,
                            probe_labels: Sequence, gallery_views: Sequence | None = None,
                            probe_views: Sequence | None = None) -> float:
    """Rank-1 accuracy of Euclidean 1-NN on features z-scored with the gallery's mean and std.

    nan features (and features constant over the gallery) contribute nothing. With views, gallery items of the
    probe's own view are excluded; a probe left with no gallery item counts as a miss.
    """
    g = np.asarray(gallery_feats, dtype=np.float64)
    p = np.asarray(probe_feats, dtype=np.float64)
    if g.ndim != 2 or p.ndim != 2 or g.shape[1] != p.shape[1]:
        raise ValueError(f"nearest_neighbour_rank1: need (N, F) gallery and (M, F) probe features, "
                         f"got {g.shape} and {p.shape}")
    if len(p) == 0:
        raise ValueError("nearest_neighbour_rank1: no probes")
    gz, pz = zscore_by_gallery(g, p)
    dist = (pz ** 2).sum(1)[:, None] + (gz ** 2).sum(1)[None, :] - 2 * pz @ gz.T  # (M, N)
    if gallery_views is not None and probe_views is not None:
        dist[np.asarray(probe_views)[:, None] == np.asarray(gallery_views)[None, :]] = np.inf
    nearest = dist.argmin(axis=1)
    has_gallery = np.isfinite(dist[np.arange(len(p)), nearest])
    hit = (np.asarray(gallery_labels)[nearest] == np.asarray(probe_labels)) & has_gallery
    return float(hit.mean())


def reference_rank1(sequences: Sequence, gallery_condition: str = "nm", exclude_same_view: bool = True) -> float:
    """The reference protocol on ``PoseSequence``s: gallery = sequences of ``gallery_condition``, probes = the
    rest, 1-NN on ``pose_statistics``; identical views excluded unless ``exclude_same_view`` is False."""
    gallery = [s for s in sequences if s.condition == gallery_condition]
    probes = [s for s in sequences if s.condition != gallery_condition]
    if not gallery or not probes:
        raise ValueError(f"reference_rank1: need gallery ({gallery_condition!r}) and probe sequences, got "
                         f"{len(gallery)} and {len(probes)}")
    feats = lambda seqs: np.stack([pose_statistics(s.poses, s.skeleton) for s in seqs])  # noqa: E731
    views = (lambda seqs: [s.view for s in seqs]) if exclude_same_view else (lambda seqs: None)
    return nearest_neighbour_rank1(feats(gallery), [s.subject for s in gallery], feats(probes),
                                   [s.subject for s in probes], views(gallery), views(probes))

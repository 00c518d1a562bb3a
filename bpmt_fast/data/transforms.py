"""Per-sequence pose normalisation and augmentations (numpy).

Every function here takes one sequence ``(T, J, C)``: ``C = 3`` is ``x, y, confidence`` (2D) and ``C = 4``
is ``x, y, z, confidence`` (3D); the last channel is always the confidence. All outputs are new float32
arrays (inputs are never modified).

Missing joints
--------------
A joint is *missing* in a frame when its confidence is 0 (``normalise`` also turns every joint below
``min_confidence`` into a missing one). The rules every function here keeps:

* ``normalise`` writes missing joints as all zeros (coordinates 0 and confidence 0), and they stay exactly 0
  after centring, rotating and scaling.
* An augmentation never turns a missing joint into a present one and never changes a missing joint's values:
  it only moves them (``Mirror`` swaps left and right joints, ``TemporalCrop`` / ``SpeedChange`` /
  ``ReverseTime`` pick frames).
  Joints an augmentation itself makes missing (``PartMask``; ``SpeedChange`` where neither neighbouring
  frame has the joint) are written as all zeros. So poses that leave ``normalise`` with missing joints at 0
  still have them at 0 after any chain of augmentations.
* Geometric augmentations (mirror, noise, rotation, scale, random move) only touch present joints.

Augmentations are small callables ``transform(poses, rng)`` where ``rng`` is a ``numpy.random.Generator``;
given the same generator state they give the same result. ``Compose`` chains them, passing the same
generator along. Geometric augmentations assume normalised poses: they mirror / rotate / scale about the
origin, which ``normalise`` puts at the hip centre of every frame.

Noise follows the GaitGraph / FastPoseGait naming: ``PointNoise`` moves every joint of every frame
independently, ``JointNoise`` moves each joint by one offset for the whole sequence.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ..model.skeleton import PART_NAMES, SkeletonFormat, get_format

__all__ = [
    "BODY_HEIGHT_PER_TORSO",
    "NORMALISATION_MODES",
    "check_poses",
    "normalise",
    "Transform",
    "Compose",
    "Mirror",
    "TemporalCrop",
    "SpeedChange",
    "ReverseTime",
    "PointNoise",
    "JointNoise",
    "PartMask",
    "RandomRotation3D",
    "RandomScale",
    "RandomMove",
]

# When no frame shows a shoulder and a hip, the scale falls back to the body height divided by this ratio
# (standing height / shoulder-to-hip-centre distance of an adult, roughly), so the output stays in about
# the same unit -- torso lengths -- as usual. ``normalise(mode="body")`` scales the body height to it.
BODY_HEIGHT_PER_TORSO = 3.0

# "hips": centre on the hips, scale by the torso; "body": also turn the spine upright, scale by the height.
NORMALISATION_MODES = ("hips", "body")


# --------------------------------------------------------------------------------------------------
# validation
def check_poses(poses, name: str = "poses", *, skeleton: SkeletonFormat | None = None,
                channels: int | None = None) -> np.ndarray:
    """Validate one pose sequence and return it as a numpy array (not copied where possible).

    Raises ValueError naming the problem: not numeric, rank not 3, no frames or joints, channels not 3 or 4
    (or not ``channels``), a joint count that does not match ``skeleton``, NaN or inf values.
    """
    try:
        arr = np.asarray(poses)
    except Exception as exc:  # e.g. ragged nested lists
        raise ValueError(f"{name} cannot be read as an array: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a numeric (T, J, C) array, got dtype {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"{name} must have rank 3 (T, J, C), got rank {arr.ndim} with shape {arr.shape}")
    frames, joints, chans = arr.shape
    if frames < 1:
        raise ValueError(f"{name} has no frames (shape {arr.shape})")
    if joints < 1:
        raise ValueError(f"{name} has no joints (shape {arr.shape})")
    if chans not in (3, 4):
        raise ValueError(f"{name} must have 3 channels (x, y, confidence) or 4 (x, y, z, confidence), "
                         f"got {chans} (shape {arr.shape})")
    if channels is not None and chans != channels:
        raise ValueError(f"{name} must have {channels} channels, got {chans} (shape {arr.shape})")
    if skeleton is not None and joints != skeleton.num_joints:
        raise ValueError(f"{name} have {joints} joints, skeleton format {skeleton.name!r} has "
                         f"{skeleton.num_joints}")
    finite = np.isfinite(arr)
    if not finite.all():
        t, j, c = np.argwhere(~finite)[0]
        raise ValueError(f"{name} contain {int((~finite).sum())} NaN or inf values (first at frame {t}, joint {j}, "
                         f"channel {c}); mark missing joints with confidence 0 instead")
    return arr


def _check_range(name: str, value, low=None, high=None, low_open=False, high_open=False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def _check_rng(rng, who: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{who} needs rng=numpy.random.Generator (e.g. np.random.default_rng(seed)), got "
                         f"{type(rng).__name__}")
    return rng


# --------------------------------------------------------------------------------------------------
# normalisation
def _pair_centre(xyz: np.ndarray, present: np.ndarray, pair: tuple[int, int]):
    """Per frame: midpoint of the pair when both are present, the present one when only one is.

    Returns (centres (T, D) with NaN where neither joint is present, has (T,) bool)."""
    a, b = pair
    pa, pb = present[:, a], present[:, b]
    centre = np.full(xyz.shape[::2], np.nan)  # (T, D)
    both = pa & pb
    centre[both] = (xyz[both, a] + xyz[both, b]) / 2
    centre[pa & ~pb] = xyz[pa & ~pb, a]
    centre[pb & ~pa] = xyz[pb & ~pa, b]
    return centre, pa | pb


def _frame_centres(xyz: np.ndarray, present: np.ndarray, skeleton: SkeletonFormat) -> np.ndarray:
    centre, has = _pair_centre(xyz, present, skeleton.hips)
    frames = len(xyz)
    if has.any():
        # no hip in a frame: the last earlier frame's centre; none earlier: the mean centre of the sequence
        last = np.maximum.accumulate(np.where(has, np.arange(frames), -1))
        filled = centre[np.maximum(last, 0)]
        filled[last < 0] = centre[has].mean(axis=0)
        return filled
    # no hip anywhere: the mean of each frame's present joints (frames without any joint: 0, never used)
    count = present.sum(axis=1)
    total = np.where(present[..., None], xyz, 0.0).sum(axis=1)
    return total / np.maximum(count, 1)[:, None]


def _positive_median(values: np.ndarray) -> float | None:
    if values.size == 0:
        return None
    m = float(np.median(values))
    return m if math.isfinite(m) and m > 0 else None


def _sequence_scale(xyz: np.ndarray, present: np.ndarray, skeleton: SkeletonFormat, hip_centre: np.ndarray) -> float:
    hips, shoulders = skeleton.hips, skeleton.shoulders
    # 1. frames where both shoulders and both hips are present
    full = present[:, list(hips + shoulders)].all(axis=1)
    if full.any():
        s_mid = (xyz[full, shoulders[0]] + xyz[full, shoulders[1]]) / 2
        h_mid = (xyz[full, hips[0]] + xyz[full, hips[1]]) / 2
        scale = _positive_median(np.linalg.norm(s_mid - h_mid, axis=-1))
        if scale is not None:
            return scale
    # 2. frames with at least one shoulder and one hip (a lone joint stands in for the midpoint)
    s_centre, has_s = _pair_centre(xyz, present, shoulders)
    has_h = present[:, hips[0]] | present[:, hips[1]]
    some = has_s & has_h
    if some.any():
        scale = _positive_median(np.linalg.norm(s_centre[some] - hip_centre[some], axis=-1))
        if scale is not None:
            return scale
    # 3. body height: the largest side of the present joints' bounding box, in frames with >= 2 joints
    several = present.sum(axis=1) >= 2
    if several.any():
        p = present[several][..., None]
        high = np.where(p, xyz[several], -np.inf).max(axis=1)
        low = np.where(p, xyz[several], np.inf).min(axis=1)
        scale = _positive_median((high - low).max(axis=-1))
        if scale is not None:
            return scale / BODY_HEIGHT_PER_TORSO
    # 4. nothing to measure (at most one joint per frame, or all coincide): leave the scale alone
    return 1.0


def _spine_direction(xyz: np.ndarray, present: np.ndarray, skeleton: SkeletonFormat) -> np.ndarray | None:
    """The sequence's mean unit spine vector (shoulder midpoint minus hip midpoint), normalised to length 1.

    Frames: those with both shoulders and both hips; if none of them has a non-zero spine, those with at
    least one shoulder and one hip (a lone joint standing in for its midpoint). Frames whose spine has length
    0 are skipped. None when no frame has a spine or the unit spines cancel out (mean length <= 1e-9)."""
    hips, shoulders = skeleton.hips, skeleton.shoulders
    s_centre, has_s = _pair_centre(xyz, present, shoulders)
    h_centre, has_h = _pair_centre(xyz, present, hips)
    full = present[:, list(hips + shoulders)].all(axis=1)
    for frames in (full, has_s & has_h):
        spine = s_centre[frames] - h_centre[frames]
        length = np.linalg.norm(spine, axis=-1)
        ok = length > 0
        if ok.any():
            mean = (spine[ok] / length[ok, None]).mean(axis=0)
            norm = float(np.linalg.norm(mean))
            # opposite spines that cancel give no direction: better no rotation than one set by rounding
            return mean / norm if norm > 1e-9 else None
    return None


def _upright_rotation(spine: np.ndarray) -> np.ndarray:
    """Rotation matrix (D, D) taking the unit vector ``spine`` onto up, (0, -1) or (0, -1, 0) (y points down).

    2D: the rotation in the x-y plane. 3D: the minimal (Rodrigues) rotation, about the axis spine x up; a spine
    pointing straight down turns half a turn about z (in the image plane, as in 2D)."""
    if len(spine) == 2:
        x, y = spine
        return np.array([[-y, x], [-x, -y]])  # columns: where x and y go; maps (x, y) to (0, -1)
    up = np.array([0.0, -1.0, 0.0])
    v = np.cross(spine, up)  # = (z, 0, -x): exact, no cancellation
    cos = float(spine @ up)
    sin2 = float(v @ v)
    if sin2 == 0.0:
        return np.eye(3) if cos > 0 else np.diag([-1.0, -1.0, 1.0])
    k = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    # I + K + K^2 (1 - cos) / sin^2: the usual 1 / (1 + cos) loses precision for spines pointing nearly down
    return np.eye(3) + k + (k @ k) * ((1.0 - cos) / sin2)


def _body_height(y: np.ndarray, present: np.ndarray) -> float | None:
    """Median vertical extent (max y - min y of present joints) over frames with at least half of the joints
    present; if there are none or the median is not positive, over frames with >= 2 joints. None if neither
    gives a positive median."""
    count = present.sum(axis=1)
    for frames in (2 * count >= present.shape[1], count >= 2):
        if frames.any():
            p = present[frames]
            extent = np.where(p, y[frames], -np.inf).max(axis=1) - np.where(p, y[frames], np.inf).min(axis=1)
            height = _positive_median(extent)
            if height is not None:
                return height
    return None


def normalise(poses, skeleton: str | SkeletonFormat, min_confidence: float = 0.05, mode: str = "hips") -> np.ndarray:
    """Centre every frame on the hips and scale the sequence; returns float32 (T, J, C).

    * Joints with confidence < ``min_confidence`` (or 0) become missing: coordinates 0 and confidence 0.
      Present joints keep their confidence.
    * Centre, per frame: the midpoint of the two hips; if one hip is missing, the other hip; if both are
      missing, the centre of the last earlier frame that had one; if no earlier frame had one, the mean of
      the sequence's hip centres. A sequence with no hip at all is centred per frame on the mean of the
      frame's present joints.
    * Torso scale, one per sequence: the median torso length, i.e. the distance from the shoulder midpoint to
      the hip midpoint over frames where both shoulders and both hips are present; else over frames with at
      least one shoulder and one hip (a lone joint standing in for its midpoint); else the median body height
      (the largest side of the present joints' bounding box) / ``BODY_HEIGHT_PER_TORSO``; else (nothing
      measurable) 1.
    * Coordinates of missing joints are exactly 0 in the output.

    ``mode`` (one of ``NORMALISATION_MODES``):

    * ``"hips"``: centre, then divide by the torso scale. The output is invariant (up to rounding) to
      translating the input or scaling it by a positive factor.
    * ``"body"`` (body-centred, after GPGait's human-oriented transformation): centre as above, then one
      rotation for the whole sequence that turns the mean unit spine vector (shoulder midpoint minus hip
      midpoint; frames with both shoulders and both hips, else frames with at least one of each, a lone joint
      standing in for its midpoint; spines of length 0 skipped) onto up, which is -y in image coordinates: for 2D the rotation in the x-y
      plane taking it to (0, -1), for 3D the minimal (Rodrigues) rotation taking it to (0, -1, 0). No spine
      in any frame, or unit spines that cancel out: no rotation. Then one scale so that the body height --
      the median over frames of the vertical extent (max y - min y) of the present joints, over frames with
      at least half of the joints present, else (none of them, or a median of 0) over frames with >= 2
      joints -- is ``BODY_HEIGHT_PER_TORSO``, i.e. about the torso units of ``"hips"``; no positive height:
      the torso scale. For 2D poses with a spine the output is invariant (up to rounding) to rotating the
      input about any point, scaling it by a positive factor and translating it; for 3D to translation and
      scale, and rotating the input about the vertical (y) axis rotates the output the same way.

    Works for 2D (C=3) and 3D (C=4) poses. Computation is in float64. Pure: the input is not modified.
    """
    skeleton = get_format(skeleton)
    min_confidence = _check_range("min_confidence", min_confidence, low=0.0)
    if not (isinstance(mode, str) and mode in NORMALISATION_MODES):
        raise ValueError(f"unknown normalisation mode {mode!r}; valid modes: {', '.join(NORMALISATION_MODES)}")
    p = check_poses(poses, skeleton=skeleton).astype(np.float64)
    conf = p[..., -1]
    present = (conf > 0) & (conf >= min_confidence)
    xyz = np.where(present[..., None], p[..., :-1], 0.0)
    centre = _frame_centres(xyz, present, skeleton)
    if mode == "hips":
        scale = _sequence_scale(xyz, present, skeleton, centre)
        coords = (xyz - centre[:, None, :]) / scale
    else:
        coords = xyz - centre[:, None, :]
        # the spine is a difference of joints, so centring does not change it; the rotation is about the
        # (new) origin, the hip centre of every frame
        spine = _spine_direction(xyz, present, skeleton)
        if spine is not None:
            coords = coords @ _upright_rotation(spine).T
        height = _body_height(coords[..., 1], present)
        if height is not None:
            scale = height / BODY_HEIGHT_PER_TORSO
        else:
            scale = _sequence_scale(xyz, present, skeleton, centre)  # no vertical extent: as in "hips"
        coords = coords / scale
    out = np.empty(p.shape, dtype=np.float32)
    out[..., :-1] = np.where(present[..., None], coords, 0.0)
    out[..., -1] = np.where(present, conf, 0.0)
    return out


# --------------------------------------------------------------------------------------------------
# augmentations
class Transform:
    """Base class: ``transform(poses, rng) -> poses``; validates the input and returns a new float32 array."""

    skeleton: SkeletonFormat | None = None
    channels: int | None = None  # 3 or 4 when the transform only works on one of them

    def _check(self, poses) -> np.ndarray:
        arr = check_poses(poses, skeleton=self.skeleton)
        if self.channels is not None and arr.shape[-1] != self.channels:
            kind = "3D poses (x, y, z, confidence)" if self.channels == 4 else "2D poses (x, y, confidence)"
            got = "2D" if arr.shape[-1] == 3 else "3D"
            raise ValueError(f"{type(self).__name__} needs {kind}, got {got} poses with shape {arr.shape}")
        return np.array(arr, dtype=np.float32)  # always a copy

    def __call__(self, poses, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v.name if isinstance(v, SkeletonFormat) else v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order, each with the same generator."""

    def __init__(self, transforms: Sequence[Callable]):
        transforms = list(transforms)
        for t in transforms:
            if not callable(t):
                raise ValueError(f"Compose takes callables transform(poses, rng), got {t!r}")
        self.transforms = transforms

    def __call__(self, poses, rng: np.random.Generator | None = None) -> np.ndarray:
        out = self._check(poses)
        for t in self.transforms:
            out = t(out, rng)
        return out


class Mirror(Transform):
    """Horizontal flip: x -> 2 * centre - x for present joints, then left and right joints swap
    (``skeleton.left_right``); y (and z) and confidences are unchanged.

    ``centre`` defaults to 0, the hip centre of normalised poses; ``centre=None`` uses the mean x of the
    present joints of the sequence (for poses that are not normalised). With ``centre=0`` applying the
    mirror twice gives back the input exactly. ``probability`` < 1 flips only that often (drawn from rng);
    with probability 1 no random number is drawn and ``rng`` may be None.
    """

    def __init__(self, skeleton: str | SkeletonFormat, probability: float = 1.0, centre: float | None = 0.0):
        self.skeleton = get_format(skeleton)
        self.probability = _check_range("probability", probability, 0.0, 1.0)
        self.centre = None if centre is None else _check_range("centre", centre)

    def __call__(self, poses, rng: np.random.Generator | None = None) -> np.ndarray:
        out = self._check(poses)
        if self.probability < 1.0 and _check_rng(rng, "Mirror").random() >= self.probability:
            return out
        present = out[..., -1] > 0
        x = out[..., 0]
        if self.centre is None:
            c = float(x[present].astype(np.float64).mean()) if present.any() else 0.0
        else:
            c = self.centre
        flipped = -x if c == 0 else (2 * c - x.astype(np.float64)).astype(np.float32)
        out[..., 0] = np.where(present, flipped, x)
        return out[:, list(self.skeleton.left_right)]


class TemporalCrop(Transform):
    """A random contiguous window of L frames, L uniform in [max(1, ceil(min_fraction * T)), T]."""

    def __init__(self, min_fraction: float = 0.5):
        self.min_fraction = _check_range("min_fraction", min_fraction, 0.0, 1.0, low_open=True)

    def __call__(self, poses, rng: np.random.Generator) -> np.ndarray:
        out = self._check(poses)
        rng = _check_rng(rng, "TemporalCrop")
        frames = len(out)
        shortest = min(frames, max(1, math.ceil(self.min_fraction * frames - 1e-9)))
        length = int(rng.integers(shortest, frames + 1))
        start = int(rng.integers(0, frames - length + 1))
        return out[start:start + length].copy()


class SpeedChange(Transform):
    """Resample time by a factor f uniform in [low, high] (f > 1: faster, fewer frames).

    The new length is max(1, round(T / f)); new frame k sits at time k * (T - 1) / (T' - 1) of the input (the
    first and last frames stay in place). A joint present in both neighbouring input frames is linearly
    interpolated (coordinates and confidence); present in only the nearer one (ties: the earlier), it is
    copied from there; otherwise it is missing (all zeros). f = 1 gives back the input exactly.
    """

    def __init__(self, low: float = 0.8, high: float = 1.25):
        self.low = _check_range("low", low, 0.0, low_open=True)
        self.high = _check_range("high", high, self.low)

    def __call__(self, poses, rng: np.random.Generator) -> np.ndarray:
        out = self._check(poses)
        factor = float(_check_rng(rng, "SpeedChange").uniform(self.low, self.high))
        frames = len(out)
        new_frames = max(1, int(round(frames / factor)))
        if new_frames == frames:
            return out  # identical sample times: k * (T - 1) / (T - 1) == k
        if new_frames == 1 or frames == 1:
            times = np.zeros(new_frames)
        else:
            times = np.arange(new_frames) * ((frames - 1) / (new_frames - 1))
        i0 = np.minimum(np.floor(times).astype(np.int64), frames - 1)
        i1 = np.minimum(i0 + 1, frames - 1)
        w = (times - i0)[:, None, None]
        p0, p1 = out[i0].astype(np.float64), out[i1].astype(np.float64)
        present = out[..., -1] > 0
        both = (present[i0] & present[i1])[..., None]
        nearest = np.where((w[..., 0] <= 0.5), i0[:, None], i1[:, None])  # (T', 1)
        near_vals = out[nearest[:, 0]]
        near_present = (near_vals[..., -1] > 0)[..., None]
        mixed = (1 - w) * p0 + w * p1
        result = np.where(both, mixed, np.where(near_present, near_vals, 0.0))
        return result.astype(np.float32)


class ReverseTime(Transform):
    """With ``probability``, play the sequence backwards: exactly ``poses[::-1]``; otherwise unchanged.

    With probability 1 no random number is drawn and ``rng`` may be None; otherwise one ``rng.random()`` is
    drawn and the frames are reversed when it is < ``probability``."""

    def __init__(self, probability: float = 0.5):
        self.probability = _check_range("probability", probability, 0.0, 1.0)

    def __call__(self, poses, rng: np.random.Generator | None = None) -> np.ndarray:
        out = self._check(poses)
        if self.probability < 1.0 and _check_rng(rng, "ReverseTime").random() >= self.probability:
            return out
        return out[::-1].copy()


class PointNoise(Transform):
    """Independent Gaussian noise (standard deviation ``std``, in normalised units) on every coordinate of
    every present joint in every frame (GaitGraph's point noise); missing joints and confidences are
    unchanged."""

    def __init__(self, std: float = 0.01):
        self.std = _check_range("std", std, 0.0)

    def __call__(self, poses, rng: np.random.Generator) -> np.ndarray:
        out = self._check(poses)
        noise = _check_rng(rng, "PointNoise").normal(0.0, self.std, size=out[..., :-1].shape)
        present = out[..., -1:] > 0
        out[..., :-1] = np.where(present, out[..., :-1] + noise, out[..., :-1])
        return out


class JointNoise(Transform):
    """One Gaussian offset per joint (standard deviation ``std``, in normalised units; drawn with shape
    (J, C - 1)) added to that joint's coordinates in every frame where it is present (GaitGraph's joint
    noise: a consistently misplaced keypoint); missing joints and confidences are unchanged."""

    def __init__(self, std: float = 0.01):
        self.std = _check_range("std", std, 0.0)

    def __call__(self, poses, rng: np.random.Generator) -> np.ndarray:
        out = self._check(poses)
        offset = _check_rng(rng, "JointNoise").normal(0.0, self.std, size=out.shape[1:2] + (out.shape[2] - 1,))
        present = out[..., -1:] > 0
        out[..., :-1] = np.where(present, out[..., :-1] + offset, out[..., :-1])
        return out


class PartMask(Transform):
    """Each body part independently, with ``probability``, becomes missing in every frame (all zeros).

    Never masks every part: if all are drawn, one part chosen at random is kept, so a sequence keeps some
    signal."""

    def __init__(self, skeleton: str | SkeletonFormat, probability: float = 0.1):
        self.skeleton = get_format(skeleton)
        self.probability = _check_range("probability", probability, 0.0, 1.0)

    def __call__(self, poses, rng: np.random.Generator) -> np.ndarray:
        out = self._check(poses)
        rng = _check_rng(rng, "PartMask")
        masked = rng.random(len(PART_NAMES)) < self.probability
        if masked.all():
            masked[int(rng.integers(len(PART_NAMES)))] = False
        for part, m in zip(PART_NAMES, masked):
            if m:
                out[:, list(self.skeleton.parts[part])] = 0.0
        return out


class RandomRotation3D(Transform):
    """Rotate 3D poses (C=4) about the vertical axis through the origin by an angle uniform in
    [-max_degrees, max_degrees]; present joints only. ``vertical_axis`` is 1 (y, as in image coordinates) by
    default. 2D poses raise ValueError."""

    channels = 4

    def __init__(self, max_degrees: float = 30.0, vertical_axis: int = 1):
        self.max_degrees = _check_range("max_degrees", max_degrees, 0.0, 180.0)
        if vertical_axis not in (0, 1, 2):
            raise ValueError(f"vertical_axis must be 0 (x), 1 (y) or 2 (z), got {vertical_axis!r}")
        self.vertical_axis = vertical_axis

    def __call__(self, poses, rng: np.random.Generator) -> np.ndarray:
        out = self._check(poses)
        angle = math.radians(float(_check_rng(rng, "RandomRotation3D").uniform(-self.max_degrees, self.max_degrees)))
        a, b = [axis for axis in range(3) if axis != self.vertical_axis]
        cos, sin = math.cos(angle), math.sin(angle)
        u, v = out[..., a].astype(np.float64), out[..., b].astype(np.float64)
        present = out[..., -1] > 0
        out[..., a] = np.where(present, cos * u - sin * v, u)
        out[..., b] = np.where(present, sin * u + cos * v, v)
        return out


class RandomScale(Transform):
    """Multiply the coordinates of present joints by one factor uniform in [low, high] (about the origin)."""

    def __init__(self, low: float = 0.9, high: float = 1.1):
        self.low = _check_range("low", low, 0.0, low_open=True)
        self.high = _check_range("high", high, self.low)

    def __call__(self, poses, rng: np.random.Generator) -> np.ndarray:
        out = self._check(poses)
        factor = np.float32(_check_rng(rng, "RandomScale").uniform(self.low, self.high))
        present = out[..., -1:] > 0
        out[..., :-1] = np.where(present, out[..., :-1] * factor, out[..., :-1])
        return out


class RandomMove(Transform):
    """A small random similarity transform that drifts smoothly over the sequence (ST-GCN's random_move).

    At ``keyframes`` evenly spaced times (the first and last frame included; one keyframe: constant) draw,
    in this order, ``keyframes`` angles uniform in [-max_degrees, max_degrees], ``keyframes`` scale factors
    uniform in [1 - max_scale, 1 + max_scale] and ``keyframes`` (x, y) shifts uniform in
    [-max_shift, max_shift]; each is linearly interpolated to every frame, and the present joints of the
    frame move to x' = s * R(angle) @ (x, y) + shift (R rotates counter-clockwise for angle > 0 in a y-up
    frame, clockwise on screen). Only x and y change: z (3D) and confidences stay, missing joints are
    untouched. All parameters 0 give back the input exactly. Rotation and scale are about the origin, the
    hip centre of normalised poses.

    ``probability`` < 1 moves only that often: one ``rng.random()`` is drawn first and the sequence is moved when
    it is < ``probability`` (as ``ReverseTime``); with probability 1 that draw is skipped.
    """

    def __init__(self, max_degrees: float = 10.0, max_scale: float = 0.1, max_shift: float = 0.1, keyframes: int = 4,
                 probability: float = 1.0):
        self.max_degrees = _check_range("max_degrees", max_degrees, 0.0, 180.0)
        # scale factors 1 - max_scale must stay positive: a zero scale would collapse the pose
        self.max_scale = _check_range("max_scale", max_scale, 0.0, 1.0, high_open=True)
        self.max_shift = _check_range("max_shift", max_shift, 0.0)
        if isinstance(keyframes, bool) or not isinstance(keyframes, (int, np.integer)) or keyframes < 1:
            raise ValueError(f"keyframes must be an integer >= 1, got {keyframes!r}")
        self.keyframes = int(keyframes)
        self.probability = _check_range("probability", probability, 0.0, 1.0)

    def __call__(self, poses, rng: np.random.Generator) -> np.ndarray:
        out = self._check(poses)
        rng = _check_rng(rng, "RandomMove")
        if self.probability < 1.0 and rng.random() >= self.probability:
            return out
        k = self.keyframes
        angles = np.radians(rng.uniform(-self.max_degrees, self.max_degrees, k))
        scales = rng.uniform(1.0 - self.max_scale, 1.0 + self.max_scale, k)
        shifts = rng.uniform(-self.max_shift, self.max_shift, (k, 2))
        # keyframes and frames on the same [0, 1] time axis, so a single frame (time 0) needs no special case
        key_times, times = np.linspace(0.0, 1.0, k), np.linspace(0.0, 1.0, len(out))
        angle = np.interp(times, key_times, angles)[:, None]
        scale = np.interp(times, key_times, scales)[:, None]
        dx = np.interp(times, key_times, shifts[:, 0])[:, None]
        dy = np.interp(times, key_times, shifts[:, 1])[:, None]
        x, y = out[..., 0].astype(np.float64), out[..., 1].astype(np.float64)
        cos, sin = np.cos(angle), np.sin(angle)
        present = out[..., -1] > 0
        out[..., 0] = np.where(present, scale * (cos * x - sin * y) + dx, x)
        out[..., 1] = np.where(present, scale * (sin * x + cos * y) + dy, y)
        return out

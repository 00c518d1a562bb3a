"""Pose normalisation, augmentations, the dataset, padded collation and the P x K identity sampler."""
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bpmt_fast.data.dataset import IdentityBatchSampler, PoseDataset, collate_padded
from bpmt_fast.data.sequence import PoseSequence
from bpmt_fast.data.transforms import (
    BODY_HEIGHT_PER_TORSO,
    NORMALISATION_MODES,
    Compose,
    JointNoise,
    Mirror,
    PartMask,
    PointNoise,
    RandomMove,
    RandomRotation3D,
    RandomScale,
    ReverseTime,
    SpeedChange,
    TemporalCrop,
    check_poses,
    normalise,
)
from bpmt_fast.model.skeleton import COCO17, FORMATS, get_format

ALL = sorted(FORMATS)


def random_poses(seed, frames=12, skeleton=COCO17, channels=3, missing=0.2, garbage=False):
    """Pixel-like poses with random missing joints (confidence 0; coordinates 0 unless `garbage`)."""
    rng = np.random.default_rng(seed)
    j = skeleton.num_joints
    out = np.empty((frames, j, channels))
    out[..., :-1] = rng.uniform(50, 400, size=(frames, j, channels - 1))
    out[..., -1] = rng.uniform(0.3, 1.0, size=(frames, j))
    gone = rng.random((frames, j)) < missing
    out[gone, -1] = 0
    if not garbage:
        out[gone, :-1] = 0
    return out


def normalised(seed, frames=12, skeleton=COCO17, channels=3, missing=0.2):
    return normalise(random_poses(seed, frames, skeleton, channels, missing), skeleton)


# ---- mirror -----------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from(ALL), channels=st.sampled_from([3, 4]),
       frames=st.integers(1, 6), missing=st.floats(0, 1), garbage=st.booleans())
def test_mirror_twice_is_identity(seed, name, channels, frames, missing, garbage):
    skeleton = get_format(name)
    poses = random_poses(seed, frames, skeleton, channels, missing, garbage).astype(np.float32)
    poses[..., :-1] -= 200  # both signs
    mirror = Mirror(skeleton)
    once = mirror(poses)
    np.testing.assert_array_equal(mirror(once, np.random.default_rng(0)), poses)
    assert ((once[..., -1] > 0) == (poses[:, list(skeleton.left_right), -1] > 0)).all()


@pytest.mark.parametrize("channels", [3, 4])
def test_mirror_swaps_left_and_right(channels):
    poses = normalised(1, channels=channels, missing=0.0)
    out = Mirror(COCO17)(poses)
    ls, rs = COCO17.shoulders
    nose = COCO17.joint_index("nose")
    np.testing.assert_array_equal(out[:, ls, 0], -poses[:, rs, 0])
    np.testing.assert_array_equal(out[:, rs, 0], -poses[:, ls, 0])
    np.testing.assert_array_equal(out[:, ls, 1:], poses[:, rs, 1:])  # y (z) and confidence move unchanged
    np.testing.assert_array_equal(out[:, nose, 0], -poses[:, nose, 0])
    # a joint missing on the left stays missing, now on the right
    poses[3, ls] = 0
    out = Mirror(COCO17)(poses)
    assert (out[3, rs] == 0).all() and out[3, ls, -1] > 0


def test_mirror_probability_and_raw_centre():
    poses = random_poses(2, missing=0.0).astype(np.float32)
    rng = np.random.default_rng(0)
    assert np.array_equal(Mirror(COCO17, probability=0.0)(poses, rng), poses)
    with pytest.raises(ValueError, match="rng"):
        Mirror(COCO17, probability=0.5)(poses)
    out = Mirror(COCO17, centre=None)(poses)  # about the mean x: the mean x is unchanged
    assert out[..., 0].mean() == pytest.approx(poses[..., 0].mean(), rel=1e-5)


# ---- normalise --------------------------------------------------------------------------------------
def _with_gaps(seed, skeleton, channels):
    """Random poses plus the awkward cases: a frame without hips, one with one hip, no shoulders at all."""
    poses = random_poses(seed, 10, skeleton, channels, missing=0.15)
    lh, rh = skeleton.hips
    poses[0, [lh, rh]] = 0  # leading frame without hips: mean centre
    poses[4, [lh, rh]] = 0  # frame without hips: last centre
    poses[6, lh] = 0  # one hip
    poses[7] = 0  # no joint at all
    return poses


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("case", ["plain", "no_shoulders", "no_hips"])
@pytest.mark.parametrize("mode", NORMALISATION_MODES)
def test_normalise_is_invariant_to_translation_and_scale(name, channels, case, mode):
    skeleton = get_format(name)
    poses = _with_gaps(3, skeleton, channels)
    if case == "no_shoulders":
        poses[:, list(skeleton.shoulders)] = 0  # scale falls back to body height; "body": no spine, no rotation
    if case == "no_hips":
        poses[:, list(skeleton.hips)] = 0  # centre falls back to the mean of the present joints
    before = poses.copy()
    base = normalise(poses, skeleton, mode=mode)
    assert np.array_equal(poses, before)  # input untouched
    assert base.dtype == np.float32 and base.shape == poses.shape
    moved = poses.copy()
    shift = np.array([-731.5, 1234.25, 77.0][: channels - 1])
    moved[..., :-1] = (poses[..., :-1] * 3.7 + shift)
    moved[poses[..., -1] == 0, :-1] = 0  # missing joints keep whatever coordinates: here 0
    np.testing.assert_allclose(normalise(moved, skeleton, mode=mode), base, atol=1e-5, rtol=1e-5)
    garbage = poses.copy()
    garbage[poses[..., -1] == 0, :-1] = 999.0  # coordinates of missing joints are ignored
    np.testing.assert_array_equal(normalise(garbage, skeleton, mode=mode), base)
    missing = poses[..., -1] == 0
    assert (base[missing] == 0).all()
    np.testing.assert_array_equal(base[~missing, -1], poses[~missing, -1].astype(np.float32))
    assert np.abs(base[~missing, :-1]).max() < 50  # no pixel coordinates left


def test_normalise_centres_on_hips_and_scales_by_torso():
    poses = random_poses(4, missing=0.0)
    out = normalise(poses, COCO17)
    lh, rh = COCO17.hips
    ls, rs = COCO17.shoulders
    np.testing.assert_allclose((out[:, lh, :2] + out[:, rh, :2]) / 2, 0, atol=1e-6)
    torso = np.linalg.norm((out[:, ls, :2] + out[:, rs, :2]) / 2, axis=-1)
    assert np.median(torso) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_array_equal(out[..., 2], poses[..., 2].astype(np.float32))
    assert np.array_equal(poses, random_poses(4, missing=0.0))  # input untouched


def test_normalise_makes_low_confidence_joints_missing():
    poses = random_poses(5, missing=0.0)
    poses[2, 7, 2] = 0.01
    poses[3, 9, 2] = 0.049
    poses[4, 9, 2] = 0.05  # at the threshold: kept
    out = normalise(poses, COCO17, min_confidence=0.05)
    assert (out[2, 7] == 0).all() and (out[3, 9] == 0).all()
    assert out[4, 9, 2] == np.float32(0.05)
    # a low-confidence hip does not drive the centre
    poses[5, COCO17.hips[0], :2] = [1e6, 1e6]
    poses[5, COCO17.hips[0], 2] = 0.01
    out = normalise(poses, COCO17)
    assert np.allclose(out[5, COCO17.hips[1], :2], 0, atol=1e-6)


@pytest.mark.parametrize("mode", NORMALISATION_MODES)
def test_normalise_degenerate_sequences(mode):
    assert (normalise(np.zeros((4, 17, 3)), COCO17, mode=mode) == 0).all()  # nothing present
    one = np.zeros((3, 17, 3))
    one[:, 0] = [100, 200, 1]
    out = normalise(one, COCO17, mode=mode)  # one joint per frame: centred on itself, scale 1
    assert (out[..., :2] == 0).all() and (out[:, 0, 2] == 1).all()


# ---- normalise, mode "body" -------------------------------------------------------------------------
# A standing person facing the camera in torso units: y points down, hips at y = 0, left side at +x. Names
# cover every format (neck, mid_hip, head, feet), so the same figure exists in each of them.
_FIGURE = {"nose": (0.0, -1.45), "left_eye": (0.06, -1.5), "left_ear": (0.12, -1.47), "head": (0.0, -1.75),
           "neck": (0.0, -1.05), "mid_hip": (0.0, 0.0), "left_shoulder": (0.4, -1.0), "left_elbow": (0.45, -0.55),
           "left_wrist": (0.45, -0.1), "left_hip": (0.25, 0.0), "left_knee": (0.22, 0.9), "left_ankle": (0.2, 1.8),
           "left_big_toe": (0.3, 1.9), "left_small_toe": (0.35, 1.88), "left_heel": (0.2, 1.85)}
_FIGURE.update({"right_" + k[5:]: (-x, y) for k, (x, y) in list(_FIGURE.items()) if k.startswith("left_")})


def _rotation(axis, degrees):
    """3 x 3 rotation by `degrees` about coordinate axis 0 (x), 1 (y) or 2 (z)."""
    a, b = [i for i in range(3) if i != axis]
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def walker(seed, frames=12, skeleton=COCO17, channels=3, missing=0.1, tilt=0.0, tilt3d=None):
    """An upright, walking figure in pixels (about 100 px per torso), turned by `tilt` degrees in the image
    plane (and for 3D by the matrix `tilt3d`); missing joints (confidence 0) have coordinates 0."""
    rng = np.random.default_rng(seed)
    j = skeleton.num_joints
    xy = np.array([_FIGURE[n] for n in skeleton.joint_names], dtype=np.float64)
    pts = np.zeros((frames, j, 3))
    pts[..., :2] = xy
    side = np.array([1.0 if n.startswith("left_") else -1.0 for n in skeleton.joint_names])
    leg = np.array([any(k in n for k in ("knee", "ankle", "toe", "heel")) for n in skeleton.joint_names])
    phase = np.sin(np.linspace(0, 2 * np.pi, frames, endpoint=False) + rng.uniform(0, 2 * np.pi))
    pts[..., 0] += 0.3 * np.outer(phase, side * leg)  # legs swing in opposite directions
    pts += rng.normal(0, 0.03, pts.shape)
    pts[..., 2] = rng.normal(0, 0.15, (frames, j)) if channels == 4 else 0.0
    pts = pts @ _rotation(2, tilt).T
    if tilt3d is not None:
        pts = pts @ np.asarray(tilt3d).T
    out = np.empty((frames, j, channels))
    out[..., :-1] = (pts * 100 + [320.0, 240.0, 500.0])[..., : channels - 1]
    out[..., -1] = rng.uniform(0.3, 1.0, (frames, j))
    gone = rng.random((frames, j)) < missing
    out[gone] = 0
    return out


def _spine(out, skeleton=COCO17):
    """Mean unit spine vector over frames with both shoulders and both hips."""
    full = (out[:, list(skeleton.hips + skeleton.shoulders), -1] > 0).all(axis=1)
    s = out[full][:, list(skeleton.shoulders), :-1].astype(np.float64).mean(axis=1)
    h = out[full][:, list(skeleton.hips), :-1].astype(np.float64).mean(axis=1)
    v = s - h
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    m = v.mean(axis=0)
    return m / np.linalg.norm(m)


def _heights(out):
    """Vertical extent of the present joints per frame, for frames with at least half of the joints."""
    present = out[..., -1] > 0
    rows = 2 * present.sum(axis=1) >= out.shape[1]
    y = out[rows, :, 1].astype(np.float64)
    p = present[rows]
    return np.where(p, y, -np.inf).max(axis=1) - np.where(p, y, np.inf).min(axis=1)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from(ALL), tilt=st.floats(-180, 180),
       angle=st.floats(-180, 180), factor=st.floats(0.05, 20), shift=st.tuples(st.floats(-2000, 2000),
       st.floats(-2000, 2000)), pivot=st.tuples(st.floats(-1000, 1000), st.floats(-1000, 1000)),
       missing=st.floats(0, 0.5))
def test_normalise_body_2d_is_invariant_to_rotation_scale_and_translation(seed, name, tilt, angle, factor, shift,
                                                                          pivot, missing):
    skeleton = get_format(name)
    poses = walker(seed, 10, skeleton, missing=missing, tilt=tilt)
    has = poses[..., -1] > 0
    assume((has[:, list(skeleton.hips)].any(axis=1) & has[:, list(skeleton.shoulders)].any(axis=1)).any())
    base = normalise(poses, skeleton, mode="body")
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    moved = poses.copy()
    moved[..., :2] = factor * ((poses[..., :2] - pivot) @ np.array([[c, -s], [s, c]]).T) + pivot + np.array(shift)
    moved[~has, :2] = 0
    np.testing.assert_allclose(normalise(moved, skeleton, mode="body"), base, atol=1e-4)
    assert (base[~has] == 0).all()


@pytest.mark.parametrize("tilt", [-150.0, -40.0, 0.0, 35.0, 90.0, 180.0])
def test_normalise_body_turns_a_tilted_walker_upright(tilt):
    poses = walker(20, tilt=tilt)
    out = normalise(poses, COCO17, mode="body")
    np.testing.assert_allclose(_spine(out), [0.0, -1.0], atol=1e-6)  # up is -y: y grows downwards
    nose, ankles = COCO17.joint_index("nose"), [COCO17.joint_index(n) for n in ("left_ankle", "right_ankle")]
    seen = out[:, nose, 2] > 0
    assert (out[seen, nose, 1] < -1).all()  # head above the hips
    assert (out[:, ankles, 1][out[:, ankles, 2] > 0] > 1).all()  # feet below
    # the same walker, upright from the start, comes out the same (rotation about the hip centre)
    np.testing.assert_allclose(out, normalise(walker(20), COCO17, mode="body"), atol=1e-4)
    hips = normalise(poses, COCO17)  # mode "hips" keeps the tilt
    expected = [-math.sin(math.radians(-tilt)), -math.cos(math.radians(tilt))]
    np.testing.assert_allclose(_spine(hips), expected, atol=0.05)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("channels", [3, 4])
def test_normalise_body_height_is_body_height_per_torso(name, channels):
    skeleton = get_format(name)
    poses = walker(21, 15, skeleton, channels, missing=0.2, tilt=25.0)
    out = normalise(poses, skeleton, mode="body")
    heights = _heights(out)
    assert len(heights) >= 8
    assert np.median(heights) == pytest.approx(BODY_HEIGHT_PER_TORSO, rel=1e-5)
    # frames with fewer than half of the joints do not count while there are others: add 20 frames
    # showing just the two shoulders (small vertical extent; no hip, so centres and spine stay the same)
    shoulders = list(skeleton.shoulders)
    k = int(np.flatnonzero((poses[:, shoulders, -1] > 0).all(axis=1))[0])
    just_shoulders = np.zeros((20,) + poses.shape[1:])
    just_shoulders[:, shoulders] = poses[k, shoulders]
    longer = normalise(np.concatenate([poses, just_shoulders]), skeleton, mode="body")
    np.testing.assert_allclose(longer[:15], out, atol=1e-5)
    # the torso comes out near 1, as in mode "hips" (the figure is 3.65 torsos tall)
    ls, rs = skeleton.shoulders
    lh, rh = skeleton.hips
    full = (out[:, [ls, rs, lh, rh], -1] > 0).all(axis=1)
    torso = np.linalg.norm((out[full, ls, :2] + out[full, rs, :2] - out[full, lh, :2] - out[full, rh, :2]) / 2, axis=-1)
    assert 0.7 < np.median(torso) < 0.95
    # fewer than half of the joints in every frame: the height comes from frames with >= 2 joints
    keep = [skeleton.joint_index("nose"), *skeleton.hips, *skeleton.shoulders]
    sparse = np.zeros_like(poses)
    sparse[:, keep] = poses[:, keep]
    sparse_out = normalise(sparse, skeleton, mode="body")
    assert len(_heights(sparse_out)) == 0
    present = sparse_out[..., -1] > 0
    y = np.where(present, sparse_out[..., 1], np.nan)
    extents = (np.nanmax(y, axis=1) - np.nanmin(y, axis=1))[present.sum(axis=1) >= 2]
    assert np.median(extents) == pytest.approx(BODY_HEIGHT_PER_TORSO, rel=1e-5)
    # no vertical extent anywhere (one joint per frame): the torso scale, 1 here
    one = np.zeros_like(poses[:3])
    one[:, 0] = poses[0, 0] if poses[0, 0, -1] > 0 else [1.0] * channels
    assert (normalise(one, skeleton, mode="body")[..., :-1] == 0).all()


@pytest.mark.parametrize("name", ALL)
def test_normalise_body_keeps_missing_joints_at_zero(name):
    skeleton = get_format(name)
    poses = _with_gaps(22, skeleton, 3)
    poses[:, 1:] = walker(22, 10, skeleton, missing=0.0, tilt=70.0)[:, 1:] * (poses[:, 1:, -1:] > 0)
    out = normalise(poses, skeleton, mode="body")
    missing = poses[..., -1] == 0
    assert missing.any() and (out[missing] == 0).all()
    assert (out[~missing, -1] > 0).all()  # and nothing present goes missing
    low = poses.copy()
    low[~missing, -1] = np.where(np.arange((~missing).sum()) % 4 == 0, 0.01, low[~missing, -1])
    out_low = normalise(low, skeleton, mode="body")
    assert (out_low[low[..., -1] < 0.05] == 0).all()  # below min_confidence: missing, all zeros


def test_normalise_body_3d():
    tilt = _rotation(0, 35.0) @ _rotation(2, -25.0)  # leaning towards the camera and sideways
    poses = walker(23, 12, COCO17, 4, missing=0.1, tilt3d=tilt)
    out = normalise(poses, COCO17, mode="body")
    np.testing.assert_allclose(_spine(out), [0.0, -1.0, 0.0], atol=1e-6)
    assert np.median(_heights(out)) == pytest.approx(BODY_HEIGHT_PER_TORSO, rel=1e-5)
    has = poses[..., -1] > 0
    assert (out[~has] == 0).all()
    # translation and scale invariance
    moved = poses.copy()
    moved[..., :3] = poses[..., :3] * 0.37 + [15.0, -900.0, 42.0]
    moved[~has] = 0
    np.testing.assert_allclose(normalise(moved, COCO17, mode="body"), out, atol=1e-4)
    # turning the input about the vertical axis (through any point) turns the output the same way
    yaw = _rotation(1, 50.0)
    turned = poses.copy()
    turned[..., :3] = (poses[..., :3] - [100.0, 7.0, -30.0]) @ yaw.T
    turned[~has] = 0
    expected = out.copy()
    expected[..., :3] = out[..., :3] @ yaw.T
    np.testing.assert_allclose(normalise(turned, COCO17, mode="body"), expected, atol=1e-4)
    # flat 3D poses (z = 0) come out as the 2D ones: the minimal rotation stays in the image plane
    flat = walker(24, 12, COCO17, 4, tilt=120.0)
    flat[..., 2] = 0
    flat2d = np.delete(flat, 2, axis=-1)
    out3, out2 = normalise(flat, COCO17, mode="body"), normalise(flat2d, COCO17, mode="body")
    np.testing.assert_allclose(out3[..., :2], out2[..., :2], atol=1e-5)
    assert (out3[..., 2] == 0).all()
    # a spine pointing straight down: half a turn in the image plane
    down = np.zeros((1, 17, 4))
    down[0, list(COCO17.hips), :] = [[1.0, 0, 0, 1], [-1.0, 0, 0, 1]]
    down[0, list(COCO17.shoulders), :] = [[1.0, 2.0, 0.5, 1], [-1.0, 2.0, -0.5, 1]]
    got = normalise(down, COCO17, mode="body")  # height 2 -> 3: times 1.5
    np.testing.assert_allclose(got[0, list(COCO17.shoulders), :3], [[-1.5, -3.0, 0.75], [1.5, -3.0, -0.75]],
                               atol=1e-6)
    np.testing.assert_allclose(got[0, list(COCO17.hips), :3], [[-1.5, 0.0, 0.0], [1.5, 0.0, 0.0]], atol=1e-6)


def _frame(hips, shoulders, skeleton=COCO17):
    """One 2D frame with only the given hips and shoulders ((x, y) or None for missing) present."""
    f = np.zeros((skeleton.num_joints, 3))
    for idx, xy in zip(skeleton.hips + skeleton.shoulders, list(hips) + list(shoulders)):
        if xy is not None:
            f[idx] = [*xy, 1.0]
    return f


def test_normalise_body_spine_rule():
    # unit spines are averaged: a long spine pointing right weighs as much as a short one pointing up
    poses = np.stack([_frame([(1, 0), (-1, 0)], [(1, -1), (-1, -1)]),  # spine (0, -1)
                      _frame([(1, 0), (-1, 0)], [(11, 0), (9, 0)])])  # spine (10, 0)
    out = normalise(poses, COCO17, mode="body")
    ls, rs = COCO17.shoulders
    spine0 = (out[0, ls, :2] + out[0, rs, :2]) / 2  # hips are at 0
    np.testing.assert_allclose(spine0 / np.linalg.norm(spine0), [-(0.5**0.5), -(0.5**0.5)], atol=1e-6)
    # frames with both shoulders and both hips decide alone; the frame with one of each is ignored
    lh, rh = COCO17.hips
    poses = np.stack([_frame([(1, 0), (-1, 0)], [(1, -1), (-1, -1)]), _frame([(0, 0), None], [(5, 0), None])])
    out = normalise(poses, COCO17, mode="body")
    # unrotated; height: frames with >= 2 joints, extents 1 and 0, median 0.5 -> 3: times 6
    np.testing.assert_allclose(out[0, [lh, rh, ls, rs], :2], [[6, 0], [-6, 0], [6, -6], [-6, -6]], atol=1e-6)
    # no frame with all four: a lone hip and a lone shoulder stand in for their midpoints
    poses = np.stack([_frame([(0, 0), None], [None, (3, 0)]), _frame([None, (0, 0)], [(0, 0), (6, 0)])])
    out = normalise(poses, COCO17, mode="body")
    # spines (3, 0) in both frames, turned to (0, -3); extents 3 and 6, median 4.5 -> 3: times 2 / 3
    np.testing.assert_allclose(out[0, rs, :2], [0.0, -2.0], atol=1e-6)
    np.testing.assert_allclose(out[1, list(COCO17.shoulders), :2], [[0.0, 0.0], [0.0, -4.0]], atol=1e-6)


def test_normalise_mode_errors_and_default():
    poses = walker(25)
    np.testing.assert_array_equal(normalise(poses, COCO17), normalise(poses, COCO17, mode="hips"))
    for bad in ("Body", "torso", None, 1):
        with pytest.raises(ValueError, match="unknown normalisation mode.*hips, body"):
            normalise(poses, COCO17, mode=bad)


# ---- augmentations ----------------------------------------------------------------------------------
def test_speed_change_factor_one_is_identity_and_lengths():
    poses = normalised(6, frames=30)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(SpeedChange(1.0, 1.0)(poses, rng), poses)
    assert len(SpeedChange(2.0, 2.0)(poses, rng)) == 15
    assert len(SpeedChange(0.5, 0.5)(poses, rng)) == 60
    slow = SpeedChange(0.5, 0.5)(poses, rng)
    np.testing.assert_array_equal(slow[0], poses[0])
    np.testing.assert_array_equal(slow[-1], poses[-1])
    both = (poses[0, :, 2] > 0) & (poses[1, :, 2] > 0)
    mid = slow[1]  # at time 29/59 ~ 0.49 between frames 0 and 1
    w = 29 / 59
    np.testing.assert_allclose(mid[both], (1 - w) * poses[0, both] + w * poses[1, both], rtol=1e-5, atol=1e-6)
    for _ in range(20):
        n = len(SpeedChange(0.8, 1.25)(poses, rng))
        assert round(30 / 1.25) <= n <= round(30 / 0.8)
    assert len(SpeedChange(100.0, 100.0)(poses, rng)) == 1


def test_temporal_crop_lengths_within_bounds():
    poses = normalised(7, frames=20)
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(200):
        out = TemporalCrop(0.5)(poses, rng)
        seen.add(len(out))
        start = int(np.flatnonzero((poses == out[0]).all(axis=(1, 2)))[0])
        np.testing.assert_array_equal(out, poses[start:start + len(out)])
    assert min(seen) >= 10 and max(seen) <= 20 and len(seen) > 5
    assert len(TemporalCrop(1.0)(poses, rng)) == 20
    assert len(TemporalCrop(0.01)(poses[:1], rng)) == 1


def _augmentations(channels):
    out = {
        "mirror": Mirror(COCO17, probability=0.5),
        "crop": TemporalCrop(0.5),
        "speed": SpeedChange(0.5, 2.0),
        "reverse": ReverseTime(0.5),
        "pointnoise": PointNoise(0.05),
        "jointnoise": JointNoise(0.05),
        "partmask": PartMask(COCO17, 0.5),
        "scale": RandomScale(0.5, 2.0),
        "move": RandomMove(20.0, 0.3, 0.3),
        "compose": Compose([Mirror(COCO17, 0.5), ReverseTime(), SpeedChange(0.7, 1.4), TemporalCrop(0.6),
                            PointNoise(0.02), JointNoise(0.02), PartMask(COCO17, 0.3), RandomScale(), RandomMove()]),
    }
    if channels == 4:
        out["rotation"] = RandomRotation3D(60)
        out["compose3d"] = Compose([out["compose"], RandomRotation3D(30)])
    return out


@pytest.mark.parametrize("channels", [3, 4])
def test_augmentations_keep_missing_joints_missing_and_are_deterministic(channels):
    poses = normalised(8, frames=16, channels=channels, missing=0.3)
    poses[:, 9] = 0  # left wrist never seen
    poses[:, 16] = 0  # right ankle never seen
    before = poses.copy()
    for name, t in _augmentations(channels).items():
        for seed in range(5):
            a = t(poses, np.random.default_rng(seed))
            b = t(poses, np.random.default_rng(seed))
            np.testing.assert_array_equal(a, b, err_msg=name)
            assert a.dtype == np.float32 and a.shape[1:] == poses.shape[1:], name
            missing = a[..., -1] == 0
            assert (a[missing] == 0).all(), name  # missing joints: exactly 0
            mirrored = isinstance(t, Mirror) and not np.array_equal(a, poses)  # a Mirror that did not flip is identity
            never = [9, 16] if not mirrored else [10, 15]
            if "compose" not in name:  # compose may mirror; check both sides' union instead
                assert (a[:, never] == 0).all(), name
            else:
                assert (a[:, [9, 16], -1] == 0).all() or (a[:, [10, 15], -1] == 0).all(), name
            if len(a) == len(poses) and name not in ("mirror", "reverse", "compose", "compose3d"):
                assert (a[before[..., -1] == 0] == 0).all(), name  # same frames: same joints missing
                assert ((a[..., -1] > 0) <= (before[..., -1] > 0)).all(), name
        assert np.array_equal(poses, before), name  # input untouched
    # different seeds give different results
    for noise in (PointNoise(0.05), JointNoise(0.05), RandomMove()):
        assert not np.array_equal(noise(poses, np.random.default_rng(0)), noise(poses, np.random.default_rng(1)))


def test_part_mask_masks_whole_parts_but_never_all():
    poses = normalised(9, missing=0.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = PartMask(COCO17, 1.0)(poses, rng)
        kept = [p for p, idx in COCO17.parts.items() if (out[:, list(idx), 2] > 0).all()]
        gone = [p for p, idx in COCO17.parts.items() if (out[:, list(idx)] == 0).all()]
        assert len(kept) == 1 and len(gone) == 4
    np.testing.assert_array_equal(PartMask(COCO17, 0.0)(poses, rng), poses)


def test_rotation_preserves_vertical_and_bone_lengths_and_rejects_2d():
    poses = normalised(10, channels=4, missing=0.2)
    out = RandomRotation3D(90)(poses, np.random.default_rng(3))
    np.testing.assert_array_equal(out[..., 1], poses[..., 1])  # y is vertical
    np.testing.assert_array_equal(out[..., 3], poses[..., 3])
    assert not np.allclose(out[..., 0], poses[..., 0])
    for a, b in COCO17.bones:
        both = (poses[:, a, 3] > 0) & (poses[:, b, 3] > 0)
        before = np.linalg.norm(poses[both, a, :3] - poses[both, b, :3], axis=-1)
        after = np.linalg.norm(out[both, a, :3] - out[both, b, :3], axis=-1)
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    z_up = RandomRotation3D(90, vertical_axis=2)(poses, np.random.default_rng(3))
    np.testing.assert_array_equal(z_up[..., 2], poses[..., 2])
    with pytest.raises(ValueError, match="3D"):
        RandomRotation3D(30)(normalised(10), np.random.default_rng(0))


def test_point_noise_is_independent_per_frame():
    poses = normalised(30, frames=10, missing=0.3)
    out = PointNoise(0.1)(poses, np.random.default_rng(5))
    noise = np.random.default_rng(5).normal(0.0, 0.1, size=poses[..., :-1].shape)  # the old JointNoise
    present = poses[..., -1] > 0
    expected = np.where(present[..., None], poses[..., :-1] + noise, poses[..., :-1]).astype(np.float32)
    np.testing.assert_array_equal(out[..., :-1], expected)
    np.testing.assert_array_equal(out[..., -1], poses[..., -1])
    delta = out[..., :-1].astype(np.float64) - poses[..., :-1]
    both = present[0] & present[1]
    assert not np.allclose(delta[0, both], delta[1, both], atol=1e-3)  # a new draw every frame


@pytest.mark.parametrize("channels", [3, 4])
def test_joint_noise_is_one_offset_per_joint(channels):
    poses = normalised(31, frames=10, channels=channels, missing=0.3)
    poses[:, 9] = 0  # never seen
    out = JointNoise(0.1)(poses, np.random.default_rng(6))
    present = poses[..., -1] > 0
    assert (out[~present] == 0).all()
    np.testing.assert_array_equal(out[..., -1], poses[..., -1])
    delta = out[..., :-1].astype(np.float64) - poses[..., :-1]
    offsets = []
    for j in range(poses.shape[1]):
        rows = present[:, j]
        if rows.sum() >= 2:
            np.testing.assert_allclose(delta[rows, j], np.broadcast_to(delta[rows, j][0], delta[rows, j].shape),
                                       atol=1e-6)  # the same offset in every frame
            offsets.append(delta[rows, j][0])
    offsets = np.array(offsets)
    assert len(offsets) >= 10 and len(np.unique(offsets.round(4), axis=0)) == len(offsets)  # one per joint
    assert 0.05 < offsets.std() < 0.2
    np.testing.assert_array_equal(JointNoise(0.0)(poses, np.random.default_rng(0)), poses)


def test_reverse_time():
    poses = normalised(32, frames=9, channels=4)
    once = ReverseTime(1.0)(poses)  # probability 1: no rng needed
    np.testing.assert_array_equal(once, poses[::-1])
    np.testing.assert_array_equal(ReverseTime(1.0)(once), poses)
    assert once.flags["C_CONTIGUOUS"] and once.dtype == np.float32
    rng = np.random.default_rng(0)
    for _ in range(10):
        np.testing.assert_array_equal(ReverseTime(0.0)(poses, rng), poses)
    flips = []
    for seed in range(40):
        a = ReverseTime(0.5)(poses, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, ReverseTime(0.5)(poses, np.random.default_rng(seed)))
        flipped = np.array_equal(a, poses[::-1])
        assert flipped or np.array_equal(a, poses)
        assert flipped == (np.random.default_rng(seed).random() < 0.5)  # one draw, reversed when below
        flips.append(flipped)
    assert 5 < sum(flips) < 35
    np.testing.assert_array_equal(ReverseTime(1.0)(poses[:1]), poses[:1])


def _fit_similarity(before, after):
    """Per frame least squares fit after = s * R(angle) @ before + shift over present joints (2D part):
    returns (angles in degrees, scales, shifts (T, 2), max residual)."""
    angles, scales, shifts, worst = [], [], [], 0.0
    for b, a in zip(before, after):
        p = b[:, -1] > 0
        x, y = b[p, 0].astype(np.float64), b[p, 1].astype(np.float64)
        one, zero = np.ones_like(x), np.zeros_like(x)
        # unknowns (c, s, dx, dy): x' = c x - s y + dx, y' = s x + c y + dy
        m = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
        rhs = np.concatenate([a[p, 0], a[p, 1]]).astype(np.float64)
        sol = np.linalg.lstsq(m, rhs, rcond=None)[0]
        worst = max(worst, float(np.abs(m @ sol - rhs).max()))
        angles.append(math.degrees(math.atan2(sol[1], sol[0])))
        scales.append(math.hypot(sol[0], sol[1]))
        shifts.append(sol[2:])
    return np.array(angles), np.array(scales), np.array(shifts), worst


@pytest.mark.parametrize("channels", [3, 4])
def test_random_move_is_a_smooth_bounded_similarity(channels):
    poses = normalised(33, frames=40, channels=channels, missing=0.2)
    poses[:, 9] = 0
    move = RandomMove(max_degrees=15.0, max_scale=0.2, max_shift=0.3, keyframes=4)
    out = move(poses, np.random.default_rng(7))
    np.testing.assert_array_equal(out, move(poses, np.random.default_rng(7)))  # reproducible
    present = poses[..., -1] > 0
    assert (out[~present] == 0).all()  # missing joints untouched
    np.testing.assert_array_equal(out[..., 2:], poses[..., 2:])  # z (3D) and confidences untouched
    angles, scales, shifts, residual = _fit_similarity(poses, out)
    assert residual < 1e-5  # every frame: one rotation, scale and shift for all of its joints
    assert np.abs(angles).max() <= 15.0 + 1e-4 and np.ptp(angles) > 1.0
    assert (scales >= 0.8 - 1e-5).all() and (scales <= 1.2 + 1e-5).all()
    assert np.abs(shifts).max() <= 0.3 + 1e-5
    assert np.abs(np.diff(angles)).max() < 30.0 / 13 * 1.01  # smooth: no jump beyond one keyframe step
    # between keyframes (frames 0, 13, 26, 39) every parameter is linear in time
    for k0 in (0, 13, 26):
        for param in (angles, scales, shifts[:, 0], shifts[:, 1]):
            seg = param[k0:k0 + 14]
            np.testing.assert_allclose(np.diff(seg, 2), 0, atol=1e-4)
    # one keyframe: the same motion in every frame
    angles, scales, shifts, _ = _fit_similarity(poses, RandomMove(15.0, 0.2, 0.3, keyframes=1)(
        poses, np.random.default_rng(8)))
    assert np.ptp(angles) < 1e-4 and np.ptp(scales) < 1e-6 and np.ptp(shifts, axis=0).max() < 1e-5


def test_random_move_zero_parameters_and_single_frames():
    poses = normalised(34, frames=6, missing=0.3)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(RandomMove(0.0, 0.0, 0.0)(poses, rng), poses)
    for frames in (1, 2):
        for k in (1, 2, 5):
            out = RandomMove(keyframes=k)(poses[:frames], rng)
            assert out.shape == poses[:frames].shape and np.isfinite(out).all()
            assert (out[poses[:frames, :, -1] == 0] == 0).all()
    # a single frame takes the first keyframe's motion
    one = RandomMove(30.0, 0.0, 0.0, keyframes=3)
    angle = math.radians(np.random.default_rng(9).uniform(-30.0, 30.0, 3)[0])
    got = one(poses[:1], np.random.default_rng(9))
    p = poses[0, :, -1] > 0
    c, s = math.cos(angle), math.sin(angle)
    x, y = poses[0, p, 0].astype(np.float64), poses[0, p, 1].astype(np.float64)
    np.testing.assert_allclose(got[0, p, :2], np.stack([c * x - s * y, s * x + c * y], 1), atol=1e-6)
    assert repr(RandomMove()) == ("RandomMove(max_degrees=10.0, max_scale=0.1, max_shift=0.1, keyframes=4, "
                                  "probability=1.0)")
    assert repr(ReverseTime()) == "ReverseTime(probability=0.5)"
    assert repr(JointNoise(0.02)) == "JointNoise(std=0.02)" and repr(PointNoise()) == "PointNoise(std=0.01)"


def test_random_move_rejects_bad_parameters():
    for kwargs, match in (({"max_degrees": -1}, "max_degrees"), ({"max_degrees": 181}, "max_degrees"),
                          ({"max_scale": 1.0}, "max_scale must be < 1"), ({"max_scale": -0.1}, "max_scale"),
                          ({"max_shift": -1}, "max_shift"), ({"max_shift": float("nan")}, "max_shift"),
                          ({"keyframes": 0}, "keyframes"), ({"keyframes": 2.5}, "keyframes"),
                          ({"keyframes": True}, "keyframes"), ({"max_degrees": "x"}, "max_degrees"),
                          ({"probability": 1.5}, "probability")):
        with pytest.raises(ValueError, match=match):
            RandomMove(**kwargs)


def test_random_move_probability_draws_once_then_moves_or_not():
    """One draw decides (moved when < probability), then the move draws as with probability 1: a sometimes-move
    that drew its parameters before deciding, or decided the other way round, fails here."""
    poses = normalised(34, frames=6, missing=0.3)  # float32, as the transforms return
    for seed in range(20):
        decide = np.random.default_rng(seed)
        moves = decide.random() < 0.5
        expected = RandomMove()(poses, decide) if moves else poses
        np.testing.assert_array_equal(RandomMove(probability=0.5)(poses, np.random.default_rng(seed)), expected)
    rng, reference = np.random.default_rng(1), np.random.default_rng(1)
    np.testing.assert_array_equal(RandomMove(probability=0.0)(poses, rng), poses)
    reference.random()
    assert rng.random() == reference.random()  # exactly one number was drawn


# ---- errors -----------------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors():
    rng = np.random.default_rng(0)
    good = normalised(11)
    with pytest.raises(ValueError, match="rank 3"):
        normalise(good[0], COCO17)
    with pytest.raises(ValueError, match="channels"):
        normalise(np.zeros((4, 17, 2)), COCO17)
    with pytest.raises(ValueError, match="17"):
        normalise(np.zeros((4, 18, 3)), COCO17)
    with pytest.raises(ValueError, match="no frames"):
        normalise(np.zeros((0, 17, 3)), COCO17)
    nan = good.copy()
    nan[2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN.*frame 2, joint 3"):
        normalise(nan, COCO17)
    for t in (PointNoise(0.1), JointNoise(0.1), ReverseTime(), RandomMove()):
        with pytest.raises(ValueError, match="NaN"):
            t(nan, rng)
        with pytest.raises(ValueError, match="rank 3"):
            t(good[0], rng)
    with pytest.raises(ValueError, match="numeric"):
        check_poses(np.array([["a"]]))
    with pytest.raises(ValueError, match="rank 3"):
        Mirror(COCO17)(good[None])
    with pytest.raises(ValueError, match="joints"):
        PartMask(COCO17)(np.zeros((3, 25, 3)), rng)
    for t in (PointNoise(0.1), JointNoise(0.1), ReverseTime(0.5), RandomMove()):
        with pytest.raises(ValueError, match=f"{type(t).__name__} needs rng"):
            t(good, None)
    with pytest.raises(ValueError, match="min_confidence"):
        normalise(good, COCO17, min_confidence=-1)
    with pytest.raises(ValueError, match="unknown skeleton"):
        normalise(good, "nope")
    for make in (lambda: SpeedChange(2.0, 1.0), lambda: SpeedChange(0.0, 1.0), lambda: TemporalCrop(0.0),
                 lambda: JointNoise(-1), lambda: PointNoise(-0.1), lambda: ReverseTime(1.5),
                 lambda: ReverseTime("often"), lambda: PartMask(COCO17, 1.5), lambda: RandomScale(-1, 1),
                 lambda: RandomRotation3D(200), lambda: RandomRotation3D(10, vertical_axis=3),
                 lambda: Compose([1])):
        with pytest.raises(ValueError):
            make()


# ---- dataset and collation --------------------------------------------------------------------------
def make_sequences(lengths=(30, 12, 45, 7, 20, 60), subjects=("b", "a", "b", "c", "a", "c"), channels=3):
    return [PoseSequence(random_poses(i, n, channels=channels).astype(np.float32), subject=s, view=f"v{i}",
                         condition="nm", sequence_id=f"{s}/{i}")
            for i, (n, s) in enumerate(zip(lengths, subjects))]


def test_dataset_items_and_crops():
    seqs = make_sequences()
    ds = PoseDataset(seqs, "coco17", max_frames=25)
    assert ds.label_map == {"a": 0, "b": 1, "c": 2} and ds.labels == [1, 0, 1, 2, 0, 2]
    item = ds[2]
    assert set(item) >= {"poses", "label", "subject", "view", "condition", "index"}
    assert item["poses"].dtype == torch.float32 and item["poses"].shape == (25, 17, 3)
    assert (item["label"], item["subject"], item["view"], item["index"]) == (1, "b", "v2", 2)
    full = normalise(seqs[2].poses, COCO17)
    np.testing.assert_array_equal(item["poses"].numpy(), full[10:35])  # centre crop (45 - 25) // 2
    assert ds[1]["poses"].shape[0] == 12  # short sequences are not padded or cropped
    aug = PoseDataset(seqs, COCO17, transform=JointNoise(0.0), max_frames=25, label_map={"a": 5, "b": 6, "c": 7})
    starts = {int(np.flatnonzero((full == aug[2]["poses"].numpy()[0]).all(axis=(1, 2)))[0]) for _ in range(20)}
    assert len(starts) > 1 and all(0 <= s <= 20 for s in starts)  # random crop when training
    assert aug[0]["label"] == 6
    a, b = (aug.get(2, np.random.default_rng(4))["poses"] for _ in range(2))
    assert torch.equal(a, b)
    aug.set_epoch(3)
    first = [aug[2]["poses"] for _ in range(3)]
    aug.set_epoch(3)
    assert all(torch.equal(x, aug[2]["poses"]) for x in first)  # reproducible per epoch


def test_dataset_rejects_bad_input():
    seqs = make_sequences()
    with pytest.raises(ValueError, match="label_map has no label.*c"):
        PoseDataset(seqs, COCO17, label_map={"a": 0, "b": 1})
    with pytest.raises(ValueError, match="skeleton format"):
        PoseDataset([PoseSequence(np.zeros((4, 25, 3)), "a", "", skeleton="openpose25")], COCO17)
    with pytest.raises(ValueError, match="channels"):
        PoseDataset(seqs + make_sequences(channels=4), COCO17)
    with pytest.raises(ValueError, match="at least one"):
        PoseDataset([], COCO17)
    with pytest.raises(IndexError):
        PoseDataset(seqs, COCO17)[6]


def test_collate_shapes_lengths_and_zero_padding():
    ds = PoseDataset(make_sequences(channels=4), COCO17, max_frames=50)
    batch = collate_padded([ds[i] for i in range(6)])
    assert batch["poses"].shape == (6, 50, 17, 4) and batch["poses"].dtype == torch.float32
    assert batch["lengths"].tolist() == [30, 12, 45, 7, 20, 50] and batch["lengths"].dtype == torch.long
    assert batch["labels"].tolist() == ds.labels and batch["labels"].dtype == torch.long
    assert batch["subjects"] == ["b", "a", "b", "c", "a", "c"] and batch["indices"] == list(range(6))
    assert batch["views"][3] == "v3" and batch["conditions"] == ["nm"] * 6
    for i, n in enumerate(batch["lengths"].tolist()):
        assert torch.equal(batch["poses"][i, :n], ds[i]["poses"])
        assert (batch["poses"][i, n:] == 0).all()
    with pytest.raises(ValueError, match="empty"):
        collate_padded([])
    with pytest.raises(ValueError, match="joints x channels"):
        collate_padded([ds[0], {"poses": torch.zeros(3, 17, 3), "label": 0}])


def test_loader_batch_feeds_a_model():
    from torch.utils.data import DataLoader

    from bpmt_fast.model import Baseline, ModelConfig

    ds = PoseDataset(make_sequences(), COCO17, transform=Compose([Mirror(COCO17, 0.5), JointNoise(0.01)]),
                     max_frames=32)
    sampler = IdentityBatchSampler(ds.labels, 2, 2, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_padded)
    model = Baseline(ModelConfig(dim=16, heads=2, part_layers=1, embedding_dim=8)).eval()
    for batch in loader:
        assert batch["poses"].shape[0] == 4 and batch["lengths"].max() <= 32
        out = model(batch["poses"], batch["lengths"])
        assert out["inference_feat"]["embeddings"].shape == (4, 8)
        assert torch.isfinite(out["inference_feat"]["embeddings"]).all()


# ---- identity batch sampler -------------------------------------------------------------------------
LABELS = [i % 7 for i in range(40)] + [7, 8, 8]  # identity 7 has one sequence, 8 has two


def test_sampler_pk_batches_of_distinct_identities():
    sampler = IdentityBatchSampler(LABELS, identities_per_batch=4, sequences_per_identity=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == math.ceil(9 / 4)
    seen = set()
    for batch in batches:
        assert len(batch) == 12
        ids = [LABELS[i] for i in batch]
        groups = [ids[k:k + 3] for k in range(0, 12, 3)]
        assert all(len(set(g)) == 1 for g in groups)  # K of one identity, listed together
        assert len({g[0] for g in groups}) == 4  # P distinct identities
        for g, idx in zip(groups, [batch[k:k + 3] for k in range(0, 12, 3)]):
            if LABELS.count(g[0]) >= 3:
                assert len(set(idx)) == 3  # without replacement when possible
            else:
                assert set(idx) == {i for i, label in enumerate(LABELS) if label == g[0]}  # all of them
        seen |= set(ids)
    assert seen == set(LABELS)  # every identity at least once per epoch


def test_sampler_deterministic_per_epoch():
    a = IdentityBatchSampler(LABELS, 3, 2, seed=5)
    b = IdentityBatchSampler(LABELS, 3, 2, seed=5)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)
    assert list(IdentityBatchSampler(LABELS, 3, 2, seed=6)) != list(b)


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="only 9 identities"):
        IdentityBatchSampler(LABELS, 10, 2)
    with pytest.raises(ValueError, match=">= 1"):
        IdentityBatchSampler(LABELS, 0, 2)
    with pytest.raises(ValueError, match="at least one"):
        IdentityBatchSampler([], 1, 1)
    assert len(list(IdentityBatchSampler(torch.tensor(LABELS), 2, 2))) == 5

"""Synthetic gait generator (bpmt_fast.data.synthetic) and the 1-NN pose-statistics reference (eval.pose_stats)."""
import time
from collections import Counter

import numpy as np
import pytest

from bpmt_fast.data.sequence import PoseSequence
from bpmt_fast.data.synthetic import (
    SyntheticGaitConfig,
    generate_synthetic_dataset,
    sample_sequence_params,
    sample_subject,
    synthesize_sequence,
)
from bpmt_fast.eval.pose_stats import pose_statistics, reference_rank1, reference_retrieval
from bpmt_fast.model.skeleton import COCO17

SMALL = SyntheticGaitConfig(num_subjects=3, sequences_per_subject=5)
CLEAN = SyntheticGaitConfig().without_nuisance()
L_SH, R_SH, L_WR, R_WR, L_HIP, R_HIP, L_ANK, R_ANK = 5, 6, 9, 10, 11, 12, 15, 16


@pytest.fixture(scope="module")
def default_dataset():
    start = time.perf_counter()
    data = generate_synthetic_dataset()
    return data, time.perf_counter() - start


def one_sequence(view, condition="nm", config=CLEAN, subject_seed=7, seq_seed=1, frames=None):
    """Poses of one sequence of one subject, with its SequenceParams."""
    subject = sample_subject(np.random.default_rng(subject_seed), config)
    rng = np.random.default_rng(seq_seed)
    seq = sample_sequence_params(rng, config, subject, view, condition)
    if frames is not None:
        seq.num_frames = frames
    return synthesize_sequence(subject, seq, config, rng), seq


# ---- generator: determinism, layout, labels -------------------------------------------------------
def test_same_seed_same_data_different_seed_different_data():
    a, b, c = (generate_synthetic_dataset(SMALL, seed=s) for s in (0, 0, 1))
    assert [s.sequence_id for s in a] == [s.sequence_id for s in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.poses, y.poses)
        assert x.meta == y.meta
    assert any(x.poses.shape != y.poses.shape or not np.array_equal(x.poses, y.poses) for x, y in zip(a, c))


def test_adding_subjects_does_not_change_the_others():
    few = generate_synthetic_dataset(SyntheticGaitConfig(num_subjects=2, sequences_per_subject=3))
    more = generate_synthetic_dataset(SyntheticGaitConfig(num_subjects=4, sequences_per_subject=3))
    for x, y in zip(few, more):
        np.testing.assert_array_equal(x.poses, y.poses)


def test_shapes_dtypes_and_labels(default_dataset):
    data, _ = default_dataset
    cfg = SyntheticGaitConfig()
    assert len(data) == cfg.num_subjects * cfg.sequences_per_subject
    assert all(isinstance(s, PoseSequence) for s in data)
    assert len({s.sequence_id for s in data}) == len(data)
    subjects = sorted({s.subject for s in data})
    assert subjects == [f"s{i:03d}" for i in range(cfg.num_subjects)]
    assert {s.view for s in data} == {"000", "030", "060", "090", "120", "150", "180"}
    for s in data:
        assert s.poses.dtype == np.float32 and s.poses.ndim == 3 and s.poses.shape[1:] == (17, 3)
        assert s.skeleton == "coco17" and s.condition in cfg.conditions
        np.testing.assert_array_equal(s.frame_times, np.arange(s.num_frames))
        assert np.isfinite(s.poses).all()
    # Conditions by share per subject (7 nm, 4 bg, 3 cl of 14 by largest remainder), and nm at every view.
    per_subject = Counter((s.subject, s.condition) for s in data)
    for subject in subjects:
        assert (per_subject[subject, "nm"], per_subject[subject, "bg"], per_subject[subject, "cl"]) == (7, 4, 3)
        assert {s.view for s in data if s.subject == subject and s.condition == "nm"} == {
            "000", "030", "060", "090", "120", "150", "180"}


def test_confidences_and_missing_joints(default_dataset):
    data, _ = default_dataset
    poses = np.concatenate([s.poses for s in data])  # (sum T, 17, 3)
    conf = poses[..., 2]
    assert conf.min() >= 0.0 and conf.max() <= 1.0
    missing = conf == 0
    assert 0.01 < missing.mean() < 0.2  # the default has missing joints, but not too many
    np.testing.assert_array_equal(poses[missing][:, :2], 0.0)
    assert (poses[~missing][:, :2] != 0).any(axis=-1).all()


def test_frame_counts_within_configured_range(default_dataset):
    data, _ = default_dataset
    lengths = [s.num_frames for s in data]
    assert min(lengths) >= 40 and max(lengths) <= 90 and len(set(lengths)) > 20
    short = generate_synthetic_dataset(SyntheticGaitConfig(num_subjects=2, min_frames=20, max_frames=23))
    assert {s.num_frames for s in short} <= {20, 21, 22, 23}


def test_default_generation_is_fast(default_dataset):
    _, seconds = default_dataset
    assert seconds < 2.0


def test_config_validation():
    with pytest.raises(ValueError, match="min_frames"):
        SyntheticGaitConfig(min_frames=50, max_frames=40)
    with pytest.raises(ValueError, match="views"):
        SyntheticGaitConfig(views=())
    clean = generate_synthetic_dataset(SyntheticGaitConfig(num_subjects=2).without_nuisance())
    assert all((s.poses[..., 2] > 0).all() and s.view == "090" for s in clean)


# ---- anatomy and the effect of view / condition --------------------------------------------------
def test_ankles_below_hips_and_head_on_top(default_dataset):
    data, _ = default_dataset
    for s in data[:100]:
        p = np.where(s.poses[..., 2:] > 0, s.poses[..., :2], np.nan)
        hip_y = np.nanmean(p[:, [L_HIP, R_HIP], 1])
        assert np.nanmean(p[:, [L_ANK, R_ANK], 1]) > hip_y  # image y points down
        assert np.nanmean(p[:, 0, 1]) < np.nanmean(p[:, [L_SH, R_SH], 1]) < hip_y


def test_left_and_right_ankles_alternate_at_side_view():
    poses, seq = one_sequence(90, frames=80)
    hip_x = poses[:, [L_HIP, R_HIP], 0].mean(1)
    left, right = poses[:, L_ANK, 0] - hip_x, poses[:, R_ANK, 0] - hip_x  # ankle positions relative to the body
    assert np.corrcoef(left, right)[0, 1] < -0.5
    # The walker moves to the right in the image at a side view (azimuth 90).
    assert hip_x[-1] > hip_x[0]


def test_view_changes_projected_shoulder_width():
    def shoulder_to_torso(view):
        poses, _ = one_sequence(view)
        width = np.abs(poses[:, L_SH, 0] - poses[:, R_SH, 0]).mean()
        torso = np.linalg.norm(poses[:, [L_SH, R_SH], :2].mean(1) - poses[:, [L_HIP, R_HIP], :2].mean(1), axis=-1)
        return width / torso.mean()

    frontal, oblique, side, back = (shoulder_to_torso(v) for v in (0, 45, 90, 180))
    assert frontal > 2.5 * side and back > 2.5 * side
    assert side < oblique < frontal
    # Facing the camera, the walker's left shoulder appears on the image right; from behind, on the left.
    front, _ = one_sequence(0)
    behind, _ = one_sequence(180)
    assert (front[:, L_SH, 0] > front[:, R_SH, 0]).all() and (behind[:, L_SH, 0] < behind[:, R_SH, 0]).all()


def test_bag_damps_one_arm_swing():
    cfg = SyntheticGaitConfig().without_nuisance()  # clean, but bag_swing_factor back to its default
    cfg.bag_swing_factor = SyntheticGaitConfig().bag_swing_factor

    def swings(condition):
        poses, seq = one_sequence(90, condition, config=cfg, frames=75)
        return [np.std(poses[:, w, 0] - poses[:, sh, 0]) for w, sh in ((L_WR, L_SH), (R_WR, R_SH))], seq

    (nm_left, nm_right), _ = swings("nm")
    (bg_left, bg_right), seq = swings("bg")
    assert seq.bag_side in (-1, 1)
    if seq.bag_side < 0:
        (nm_bag, nm_free), (bg_bag, bg_free) = (nm_left, nm_right), (bg_left, bg_right)
    else:
        (nm_bag, nm_free), (bg_bag, bg_free) = (nm_right, nm_left), (bg_right, bg_left)
    assert bg_bag < 0.5 * nm_bag
    assert 0.75 < bg_free / nm_free < 1.33


def test_speed_changes_cadence():
    slow_cfg = SyntheticGaitConfig().without_nuisance()
    slow_cfg.speed_range = (0.7, 0.7)
    fast_cfg = SyntheticGaitConfig().without_nuisance()
    fast_cfg.speed_range = (1.4, 1.4)

    def cycles(config):  # zero crossings of the ankle-ankle distance ~ two per step
        poses, _ = one_sequence(90, config=config, frames=90)
        d = poses[:, L_ANK, 0] - poses[:, R_ANK, 0]
        return np.sum(np.diff(np.sign(d)) != 0)

    assert cycles(fast_cfg) > cycles(slow_cfg)


# ---- the pose-statistics reference ------------------------------------------------------------------
def test_pose_statistics_shape_and_invariances():
    poses, _ = one_sequence(60, frames=50)
    feats = pose_statistics(poses)
    j, b = COCO17.num_joints, len(COCO17.bones)
    assert feats.shape == (4 * j + b + 2 * j,) and np.isfinite(feats).all()
    moved = poses.copy()
    moved[..., :2] = poses[..., :2] * 3.7 + np.array([-250.0, 1000.0], dtype=np.float32)
    np.testing.assert_allclose(pose_statistics(moved), feats, rtol=1e-4, atol=1e-5)
    # Scaling the confidences does not matter either (only confidence 0 does).
    rescaled = poses.copy()
    rescaled[..., 2] *= 0.5
    np.testing.assert_allclose(pose_statistics(rescaled), feats, rtol=1e-6, atol=1e-9)


def test_pose_statistics_ignores_confidence_zero_joints():
    poses, _ = one_sequence(30, frames=50)
    rng = np.random.default_rng(0)
    hidden = rng.random(poses.shape[:2]) < 0.2
    a, b = poses.copy(), poses.copy()
    a[hidden] = 0.0
    b[hidden] = np.concatenate([rng.normal(0, 1e4, (hidden.sum(), 2)), np.zeros((hidden.sum(), 1))], axis=1)
    fa, fb = pose_statistics(a), pose_statistics(b)
    np.testing.assert_allclose(fa, fb, rtol=1e-12, atol=1e-12)
    assert np.isfinite(fa).all()
    # The hidden joints really are excluded: the features stay close to those of the full sequence.
    full = pose_statistics(poses)
    assert np.abs(fa - full).max() < 0.3
    # A joint never seen gives nan features for that joint, not an error.
    never = poses.copy()
    never[:, 9] = 0.0
    fn = pose_statistics(never)
    assert np.isnan(fn[9 * 2]) and np.isfinite(fn[0])


def test_pose_statistics_rejects_bad_shapes():
    with pytest.raises(ValueError, match="poses must be"):
        pose_statistics(np.zeros((10, 12, 3)))


def test_reference_retrieval_is_1nn_on_gallery_zscored_statistics():
    """The reference ranks by Euclidean distance between features z-scored with the gallery's statistics."""
    data = generate_synthetic_dataset(SyntheticGaitConfig(num_subjects=4, sequences_per_subject=4))
    gallery = [s for s in data if s.condition == "nm"]
    probes = [s for s in data if s.condition != "nm"]
    result = reference_retrieval(gallery, probes, ("gait3d",))["all"]["gait3d"]
    g = np.stack([pose_statistics(s.poses) for s in gallery])
    p = np.stack([pose_statistics(s.poses) for s in probes])
    mean, std = np.nanmean(g, 0), np.nanstd(g, 0)
    std = np.where(std > 1e-12, std, np.inf)
    gz, pz = np.nan_to_num((g - mean) / std), np.nan_to_num((p - mean) / std)
    nearest = ((pz[:, None] - gz[None]) ** 2).sum(-1).argmin(1)
    hits = [gallery[j].subject == s.subject for j, s in zip(nearest, probes)]
    assert result["rank1"] == pytest.approx(np.mean(hits))


# ---- difficulty band ------------------------------------------------------------------------------------
def test_default_dataset_difficulty_band(default_dataset):
    data, _ = default_dataset
    rank1 = reference_rank1(data)  # gallery nm, probes bg + cl, cross-view protocol
    assert 0.15 <= rank1 <= 0.65, rank1
    assert rank1 == pytest.approx(0.20, abs=0.01)  # the figure the module docstring states (seed 0)


def test_identity_is_learnable_without_nuisance():
    data = generate_synthetic_dataset(SyntheticGaitConfig().without_nuisance())
    assert reference_rank1(data, protocol="gait3d") > 0.9

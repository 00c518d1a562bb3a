"""Pose normalisation, augmentations, the dataset, padded collation and the P x K identity sampler."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bpmt_fast.data.dataset import IdentityBatchSampler, PoseDataset, collate_padded
from bpmt_fast.data.sequence import PoseSequence
from bpmt_fast.data.transforms import (
    Compose,
    JointNoise,
    Mirror,
    PartMask,
    RandomRotation3D,
    RandomScale,
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
def test_normalise_is_invariant_to_translation_and_scale(name, channels, case):
    skeleton = get_format(name)
    poses = _with_gaps(3, skeleton, channels)
    if case == "no_shoulders":
        poses[:, list(skeleton.shoulders)] = 0  # scale falls back to body height
    if case == "no_hips":
        poses[:, list(skeleton.hips)] = 0  # centre falls back to the mean of the present joints
    base = normalise(poses, skeleton)
    assert base.dtype == np.float32 and base.shape == poses.shape
    moved = poses.copy()
    shift = np.array([-731.5, 1234.25, 77.0][: channels - 1])
    moved[..., :-1] = (poses[..., :-1] * 3.7 + shift)
    moved[poses[..., -1] == 0, :-1] = 0  # missing joints keep whatever coordinates: here 0
    np.testing.assert_allclose(normalise(moved, skeleton), base, atol=1e-5, rtol=1e-5)
    garbage = poses.copy()
    garbage[poses[..., -1] == 0, :-1] = 999.0  # coordinates of missing joints are ignored
    np.testing.assert_array_equal(normalise(garbage, skeleton), base)
    missing = poses[..., -1] == 0
    assert (base[missing] == 0).all()
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


def test_normalise_degenerate_sequences():
    assert (normalise(np.zeros((4, 17, 3)), COCO17) == 0).all()  # nothing present
    one = np.zeros((3, 17, 3))
    one[:, 0] = [100, 200, 1]
    out = normalise(one, COCO17)  # one joint per frame: centred on itself, scale 1
    assert (out[..., :2] == 0).all() and (out[:, 0, 2] == 1).all()


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
        "noise": JointNoise(0.05),
        "partmask": PartMask(COCO17, 0.5),
        "scale": RandomScale(0.5, 2.0),
        "compose": Compose([Mirror(COCO17, 0.5), SpeedChange(0.7, 1.4), TemporalCrop(0.6), JointNoise(0.02),
                            PartMask(COCO17, 0.3), RandomScale()]),
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
            if len(a) == len(poses) and name not in ("mirror", "compose", "compose3d"):
                assert (a[before[..., -1] == 0] == 0).all(), name  # same frames: same joints missing
                assert ((a[..., -1] > 0) <= (before[..., -1] > 0)).all(), name
        assert np.array_equal(poses, before), name  # input untouched
    # different seeds give different results
    noise = JointNoise(0.05)
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
    with pytest.raises(ValueError, match="NaN"):
        JointNoise(0.1)(nan, rng)
    with pytest.raises(ValueError, match="numeric"):
        check_poses(np.array([["a"]]))
    with pytest.raises(ValueError, match="rank 3"):
        Mirror(COCO17)(good[None])
    with pytest.raises(ValueError, match="joints"):
        PartMask(COCO17)(np.zeros((3, 25, 3)), rng)
    with pytest.raises(ValueError, match="rng"):
        JointNoise(0.1)(good, None)
    with pytest.raises(ValueError, match="min_confidence"):
        normalise(good, COCO17, min_confidence=-1)
    with pytest.raises(ValueError, match="unknown skeleton"):
        normalise(good, "nope")
    for make in (lambda: SpeedChange(2.0, 1.0), lambda: SpeedChange(0.0, 1.0), lambda: TemporalCrop(0.0),
                 lambda: JointNoise(-1), lambda: PartMask(COCO17, 1.5), lambda: RandomScale(-1, 1),
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

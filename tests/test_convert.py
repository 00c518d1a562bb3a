"""Joint-format conversion (bpmt_fast.data.convert) and data.skeleton converting on load (bpmt_fast.train.data).

The table of which pairs convert is checked against a restatement written out by hand here, values are checked by
joint name on random odd-sized inputs, and the OpenPose-18 -> COCO-17 order against the index list OpenGait's
``datasets/OUMVLP/oumvlp17.py`` uses for the same conversion."""
from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest

from bpmt_fast.data.convert import conversion_plan, convert_poses, convert_sequence, convert_sequences
from bpmt_fast.data.sequence import PoseSequence
from bpmt_fast.data.transforms import Mirror
from bpmt_fast.model.skeleton import FORMATS, SkeletonFormat, get_format
from bpmt_fast.train.config import DataConfig, from_dict
from bpmt_fast.train.data import load_pretrain_source, load_sequences

FEET = {"left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel"}
# Hand-written: (source, target) -> the target joints the source cannot give; pairs not listed convert.
IMPOSSIBLE = {
    ("coco17", "openpose25"): FEET,
    ("coco17", "halpe26"): FEET | {"head"},
    ("openpose18", "openpose25"): FEET,
    ("openpose18", "halpe26"): FEET | {"head"},
    ("openpose25", "halpe26"): {"head"},
}
CONVERTIBLE = {("coco17", "openpose18"), ("openpose18", "coco17"), ("openpose25", "coco17"),
               ("openpose25", "openpose18"), ("halpe26", "coco17"), ("halpe26", "openpose18"),
               ("halpe26", "openpose25")} | {(f, f) for f in FORMATS}
PAIRS = list(itertools.product(FORMATS, FORMATS))
MIDPOINTS = {"neck": ("left_shoulder", "right_shoulder"), "mid_hip": ("left_hip", "right_hip")}


def random_poses(joints: int, channels: int, frames: int = 7, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    poses = rng.normal(0, 50, (frames, joints, channels)).astype(np.float32)
    poses[..., -1] = rng.uniform(0.05, 1.0, (frames, joints))
    return poses


def test_the_hand_written_table_covers_every_pair():
    assert set(PAIRS) == CONVERTIBLE | set(IMPOSSIBLE) and not CONVERTIBLE & set(IMPOSSIBLE)


@pytest.mark.parametrize("source, target", PAIRS)
def test_every_pair_converts_or_names_the_missing_joints(source, target):
    poses = random_poses(get_format(source).num_joints, 3)
    if (source, target) in CONVERTIBLE:
        out = convert_poses(poses, source, target)
        assert out.shape == (7, get_format(target).num_joints, 3) and out.dtype == np.float32
        return
    with pytest.raises(ValueError) as exc:
        convert_poses(poses, source, target)
    message = str(exc.value)
    assert repr(source) in message and repr(target) in message
    missing = message.split(f"{source} has no ", 1)[1].split(" (", 1)[0]
    assert set(missing.split(", ")) == IMPOSSIBLE[(source, target)]


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("source, target", sorted(CONVERTIBLE))
def test_values_land_on_the_joint_of_the_same_name(source, target, channels):
    src, dst = get_format(source), get_format(target)
    poses = random_poses(src.num_joints, channels, frames=5, seed=len(source) * 31 + len(target))
    before = poses.copy()
    out = convert_poses(poses, source, target)
    np.testing.assert_array_equal(poses, before)  # the input is not changed
    assert out.shape == (5, dst.num_joints, channels)
    for k, name in enumerate(dst.joint_names):
        if name in src.joint_names:
            np.testing.assert_array_equal(out[:, k], poses[:, src.joint_index(name)], err_msg=name)
        else:
            left, right = (poses[:, src.joint_index(n)] for n in MIDPOINTS[name])
            np.testing.assert_allclose(out[:, k, :-1], (left[:, :-1] + right[:, :-1]) / 2, rtol=1e-6, err_msg=name)
            np.testing.assert_array_equal(out[:, k, -1], np.minimum(left[:, -1], right[:, -1]))


def test_openpose18_to_coco17_matches_opengait_oumvlp17_order():
    opengait_mask = [0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10]
    assert conversion_plan("openpose18", "coco17") == [("copy", (i,)) for i in opengait_mask]
    poses = random_poses(18, 3)
    np.testing.assert_array_equal(convert_poses(poses, "openpose18", "coco17"), poses[:, opengait_mask])


def test_neck_synthesis_value_and_confidence():
    poses = np.zeros((3, 17, 3), np.float32)
    poses[:, 5] = [[10, 20, 0.9], [10, 20, 0.4], [10, 20, 0.0]]  # left shoulder
    poses[:, 6] = [[30, 40, 0.6], [30, 40, 0.8], [30, 40, 0.7]]  # right shoulder
    out = convert_poses(poses, "coco17", "openpose18")
    neck = out[:, get_format("openpose18").joint_index("neck")]
    np.testing.assert_allclose(neck, [[20, 30, 0.6], [20, 30, 0.4], [0, 0, 0]])  # one shoulder missing: no neck


def test_mid_hip_synthesis_with_a_missing_hip():
    # none of the built-in targets with a mid_hip can be reached without it (their feet are missing), so use a
    # COCO-17 + mid_hip format made for the test
    coco = get_format("coco17")
    with_mid_hip = SkeletonFormat(
        name="coco17_mid_hip", joint_names=coco.joint_names + ("mid_hip",),
        parts={**coco.parts, "torso": coco.parts["torso"] + (17,)}, bones=coco.bones + ((0, 17),),
        left_right=coco.left_right + (17,), hips=coco.hips, shoulders=coco.shoulders)
    poses = random_poses(17, 4, frames=2)
    poses[1, 12, -1] = 0  # right hip missing in frame 1
    out = convert_poses(poses, coco, with_mid_hip)
    np.testing.assert_allclose(out[0, 17, :-1], (poses[0, 11, :-1] + poses[0, 12, :-1]) / 2, rtol=1e-6)
    assert out[0, 17, -1] == min(poses[0, 11, -1], poses[0, 12, -1])
    np.testing.assert_array_equal(out[1, 17], [0, 0, 0, 0])
    np.testing.assert_array_equal(out[:, :17], poses)


def test_round_trip_coco17_openpose18_coco17_is_identity():
    poses = random_poses(17, 3, frames=9)
    poses[2, 5, 2] = 0  # a missing shoulder survives the round trip too
    back = convert_poses(convert_poses(poses, "coco17", "openpose18"), "openpose18", "coco17")
    np.testing.assert_array_equal(back, poses)


@pytest.mark.parametrize("source, target", sorted(CONVERTIBLE))
def test_mirroring_commutes_with_conversion(source, target):
    poses = random_poses(get_format(source).num_joints, 3, frames=5, seed=3)
    poses[1, 3, 2] = 0  # a missing joint keeps its x
    mirror_src, mirror_dst = Mirror(source), Mirror(target)
    np.testing.assert_allclose(convert_poses(mirror_src(poses), source, target),
                               mirror_dst(convert_poses(poses, source, target)), rtol=1e-6, atol=1e-5)


def test_same_format_is_a_copy_and_bad_shapes_are_named():
    poses = random_poses(25, 4)
    out = convert_poses(poses, "openpose25", "body25")
    np.testing.assert_array_equal(out, poses)
    assert out is not poses and not np.shares_memory(out, poses)
    with pytest.raises(ValueError, match=r"poses have 18 joints, but skeleton format 'coco17' has 17"):
        convert_poses(random_poses(18, 3), "coco17", "openpose18")
    with pytest.raises(ValueError, match=r"\(\.\.\., joints, 3 or 4\)"):
        convert_poses(np.zeros((4, 17, 2)), "coco17", "openpose18")
    with pytest.raises(ValueError, match="unknown skeleton format 'coco18'"):
        convert_poses(random_poses(17, 3), "coco17", "coco18")


def test_convert_sequence_keeps_the_other_fields():
    seq = PoseSequence(poses=random_poses(18, 3), subject="7", view="090", condition="bg",
                       frame_times=np.arange(3, 10), skeleton="openpose18", sequence_id="7/bg-01/090",
                       source="x.pkl", meta={"split": ["train"]}, recording="7/bg-01")
    out = convert_sequence(seq, "coco17")
    assert out is not seq and out.skeleton == "coco17" and out.poses.shape == (7, 17, 3)
    assert (out.subject, out.view, out.condition, out.sequence_id, out.source, out.recording) == \
        (seq.subject, seq.view, seq.condition, seq.sequence_id, seq.source, seq.recording)
    np.testing.assert_array_equal(out.frame_times, seq.frame_times)
    assert out.meta == seq.meta and out.meta is not seq.meta
    assert seq.skeleton == "openpose18" and seq.poses.shape == (7, 18, 3)  # the original is unchanged
    coco = convert_sequence(seq, "coco17")
    same, converted = convert_sequences([coco, seq], "coco17")
    assert same is coco and converted.skeleton == "coco17"
    with pytest.raises(ValueError, match=r"7/bg-01/090: cannot convert skeleton format 'openpose18' to 'halpe26'"):
        convert_sequences([seq], "halpe26")


def write_opengait_tree(root, joints):
    for subject in ("001", "002"):
        for view in ("000", "090"):
            path = root / subject / "nm-01" / view / f"{view}.pkl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(pickle.dumps(random_poses(joints, 3, frames=12), protocol=4))


def write_pyskl_file(path, joints):
    annotations = [{"frame_dir": f"{s:03d}-nm-01-090", "label": s, "total_frames": 10,
                    "keypoint": random_poses(joints, 2, frames=10, seed=s)[None],
                    "keypoint_score": np.full((1, 10, joints), 0.8, np.float32)} for s in range(1, 4)]
    path.write_bytes(pickle.dumps({"split": {"train": [a["frame_dir"] for a in annotations]},
                                   "annotations": annotations}, protocol=4))


def test_data_skeleton_converts_on_load(tmp_path):
    write_opengait_tree(tmp_path / "og", 18)
    write_pyskl_file(tmp_path / "pyskl.pkl", 18)
    for source in (f"opengait:{tmp_path / 'og'}", f"pyskl:{tmp_path / 'pyskl.pkl'}"):
        config = from_dict(DataConfig, {"source": source, "skeleton": "coco17"})
        sequences, report = load_sequences(config)
        assert sequences and report.loaded == len(sequences)
        assert {s.skeleton for s in sequences} == {"coco17"} and {s.poses.shape[1] for s in sequences} == {17}
        extra, _ = load_pretrain_source(source, config)
        assert {s.skeleton for s in extra} == {"coco17"}
        kept = from_dict(DataConfig, {"source": source, "skeleton": "openpose18"})
        assert {s.skeleton for s in load_sequences(kept)[0]} == {"openpose18"}


def test_impossible_conversion_on_load_names_the_source(tmp_path):
    write_opengait_tree(tmp_path / "og", 17)
    source = f"opengait:{tmp_path / 'og'}"
    config = from_dict(DataConfig, {"source": source, "skeleton": "openpose25"})
    with pytest.raises(ValueError, match=r"data.source 'opengait:.*'.*'coco17' to 'openpose25'.*left_big_toe"):
        load_sequences(config)
    with pytest.raises(ValueError, match=r"data.pretrain_sources 'opengait:.*'.*left_heel"):
        load_pretrain_source(source, config)

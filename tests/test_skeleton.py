"""Skeleton formats: joint orders, BPMT part maps, mirror symmetry, bone trees, lookups."""
import re

import pytest

from bpmt_fast.model.skeleton import (
    COCO17_JOINTS,
    FORMATS,
    PART_NAMES,
    SkeletonFormat,
    get_format,
)

ALL = sorted(FORMATS)

# Joint orders as spelled by the upstream projects (OpenPose / AlphaPose docs), for an independent check.
UPSTREAM = {
    "coco17": ["Nose", "LEye", "REye", "LEar", "REar", "LShoulder", "RShoulder", "LElbow", "RElbow",
               "LWrist", "RWrist", "LHip", "RHip", "LKnee", "RKnee", "LAnkle", "RAnkle"],
    "openpose18": ["Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist",
                   "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar"],
    "openpose25": ["Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist",
                   "MidHip", "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye",
                   "REar", "LEar", "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel"],
}  # fmt: skip
UPSTREAM["halpe26"] = UPSTREAM["coco17"] + [
    "Head", "Neck", "MidHip", "LBigToe", "RBigToe", "LSmallToe", "RSmallToe", "LHeel", "RHeel"
]


def _snake(upstream: str) -> str:
    s = re.sub(r"^L(?=[A-Z])", "Left", re.sub(r"^R(?=[A-Z])", "Right", upstream))
    return re.sub(r"(?<!^)(?=[A-Z])", "_", s).lower()


def _mirror_name(name: str) -> str:
    return name.replace("left", "\0").replace("right", "left").replace("\0", "right")


@pytest.mark.parametrize("name", ALL)
def test_joint_order_matches_upstream(name):
    assert FORMATS[name].joint_names == tuple(_snake(n) for n in UPSTREAM[name])


def test_coco17_parts_are_bpmt():
    fmt = get_format("coco17")
    assert fmt.parts == {
        "torso": (0, 1, 2, 3, 4, 5, 6, 11, 12),
        "left_arm": (7, 9),
        "right_arm": (8, 10),
        "left_leg": (13, 15),
        "right_leg": (14, 16),
    }
    assert fmt.joint_names == COCO17_JOINTS
    assert fmt.part_sizes == (9, 2, 2, 2, 2) and fmt.max_part_size == 9


@pytest.mark.parametrize("name", ALL)
def test_parts_disjoint_cover_in_order(name):
    fmt = FORMATS[name]
    assert tuple(fmt.parts) == PART_NAMES and fmt.num_parts == 5
    flat = [i for idx in fmt.parts.values() for i in idx]
    assert sorted(flat) == list(range(fmt.num_joints))  # disjoint + covering
    assert sum(fmt.part_sizes) == fmt.num_joints
    for p, idx in fmt.parts.items():
        assert list(idx) == sorted(idx)
    assert [PART_NAMES[k] for k in fmt.joint_part] == [
        next(p for p, idx in fmt.parts.items() if j in idx) for j in range(fmt.num_joints)
    ]


@pytest.mark.parametrize("name", ALL)
def test_parts_follow_the_rule(name):
    fmt = FORMATS[name]
    names = {p: {fmt.joint_names[i] for i in idx} for p, idx in fmt.parts.items()}
    for side in ("left", "right"):
        assert names[f"{side}_arm"] == {f"{side}_elbow", f"{side}_wrist"}
        leg = names[f"{side}_leg"]
        assert {f"{side}_knee", f"{side}_ankle"} <= leg
        assert all(n.startswith(side) and n.split("_", 1)[1] in ("knee", "ankle", "big_toe", "small_toe", "heel")
                   for n in leg)
    assert {"nose", "left_shoulder", "right_shoulder", "left_hip", "right_hip"} <= names["torso"]
    assert not any(k in n for n in names["torso"] for k in ("elbow", "wrist", "knee", "ankle", "toe", "heel"))
    # every foot joint the format has sits in its leg
    foot = {n for n in fmt.joint_names if n.endswith(("toe", "heel"))}
    assert foot <= names["left_leg"] | names["right_leg"]


@pytest.mark.parametrize("name", ALL)
def test_mirror_is_involution_consistent_with_names(name):
    fmt = FORMATS[name]
    lr = fmt.left_right
    assert sorted(lr) == list(range(fmt.num_joints))
    assert all(lr[lr[j]] == j for j in range(fmt.num_joints))
    for j, n in enumerate(fmt.joint_names):
        assert fmt.joint_names[lr[j]] == _mirror_name(n)
        assert (lr[j] == j) == ("left" not in n and "right" not in n)
    # mirroring maps each part onto its counterpart and the bone set onto itself
    for p, idx in fmt.parts.items():
        assert sorted(lr[i] for i in idx) == list(fmt.parts[_mirror_name(p)])
    assert {(lr[a], lr[b]) for a, b in fmt.bones} == set(fmt.bones)


@pytest.mark.parametrize("name", ALL)
def test_hips_and_shoulders(name):
    fmt = FORMATS[name]
    assert [fmt.joint_names[i] for i in fmt.hips] == ["left_hip", "right_hip"]
    assert [fmt.joint_names[i] for i in fmt.shoulders] == ["left_shoulder", "right_shoulder"]


@pytest.mark.parametrize("name", ALL)
def test_bones_form_a_tree(name):
    fmt = FORMATS[name]
    J = fmt.num_joints
    assert len(fmt.bones) == J - 1
    assert all(0 <= i < J for b in fmt.bones for i in b)
    assert len({frozenset(b) for b in fmt.bones}) == J - 1  # no duplicates / self loops
    # union-find: J-1 edges with no cycle => spanning tree
    parent = list(range(J))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in fmt.bones:
        ra, rb = find(a), find(b)
        assert ra != rb, f"cycle through bone {(a, b)}"
        parent[ra] = rb
    assert len({find(j) for j in range(J)}) == 1
    # directed parent -> child: each joint but the root has exactly one parent
    children = [c for _, c in fmt.bones]
    assert len(set(children)) == J - 1


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("pad", [-1, 0, 99])
def test_part_index_matrix(name, pad):
    fmt = FORMATS[name]
    m = fmt.part_index_matrix(pad)
    assert len(m) == fmt.num_parts and all(len(row) == fmt.max_part_size for row in m)
    for row, p in zip(m, PART_NAMES):
        n = len(fmt.parts[p])
        assert row[:n] == list(fmt.parts[p]) and row[n:] == [pad] * (fmt.max_part_size - n)
    assert fmt.part_index_matrix() == fmt.part_index_matrix(-1)


def test_max_part_sizes():
    assert {n: f.max_part_size for n, f in FORMATS.items()} == {
        "coco17": 9, "openpose18": 10, "openpose25": 11, "halpe26": 12
    }
    assert FORMATS["openpose25"].part_sizes == (11, 2, 2, 5, 5)
    assert FORMATS["halpe26"].part_sizes == (12, 2, 2, 5, 5)


@pytest.mark.parametrize("name", ALL)
def test_coco17_indices_map_names(name):
    fmt = FORMATS[name]
    idx = fmt.coco17_indices
    assert idx is not None and len(idx) == 17
    assert [fmt.joint_names[i] for i in idx] == list(COCO17_JOINTS)


def test_coco17_indices_specific():
    assert FORMATS["coco17"].coco17_indices == tuple(range(17))
    assert FORMATS["halpe26"].coco17_indices == tuple(range(17))
    op18 = FORMATS["openpose18"]
    assert op18.joint_index("nose") == 0 and op18.joint_index("neck") == 1
    assert op18.coco17_indices[0] == 0 and 1 not in op18.coco17_indices
    assert op18.coco17_indices == (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)
    op25 = FORMATS["openpose25"]
    assert 1 not in op25.coco17_indices and 8 not in op25.coco17_indices
    assert op25.coco17_indices == (0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11)


def test_coco17_indices_none_when_missing():
    fmt = SkeletonFormat(
        name="tiny",
        joint_names=("neck", "left_hip", "right_hip"),
        parts={"torso": (0, 1, 2), "left_arm": (), "right_arm": (), "left_leg": (), "right_leg": ()},
        bones=((0, 1), (0, 2)),
        left_right=(0, 2, 1),
        hips=(1, 2),
        shoulders=(1, 2),
    )
    assert fmt.coco17_indices is None


def test_joint_index_unknown():
    with pytest.raises(ValueError, match="no joint 'tail'"):
        FORMATS["coco17"].joint_index("tail")


@pytest.mark.parametrize(
    "alias, target",
    [
        ("coco17", "coco17"), ("COCO", "coco17"), ("coco-17", "coco17"),
        ("openpose18", "openpose18"), ("OpenPose_18", "openpose18"),
        ("openpose25", "openpose25"), ("body25", "openpose25"), ("BODY_25", "openpose25"), ("openpose", "openpose25"),
        ("halpe26", "halpe26"), ("Halpe-26", "halpe26"), ("alphapose", "halpe26"), ("AlphaPose", "halpe26"),
    ],
)  # fmt: skip
def test_get_format_aliases(alias, target):
    assert get_format(alias) is FORMATS[target]


def test_get_format_passthrough():
    assert get_format(FORMATS["halpe26"]) is FORMATS["halpe26"]


def test_get_format_unknown_lists_valid_names():
    with pytest.raises(ValueError) as exc:
        get_format("h36m")
    msg = str(exc.value)
    assert "'h36m'" in msg
    for n in FORMATS:
        assert n in msg


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(parts={"torso": (0, 1), "left_arm": (1,), "right_arm": (2,), "left_leg": (), "right_leg": ()}),
         "disjoint"),
        (dict(left_right=(1, 2, 0)), "involutive"),
        (dict(bones=((0, 1), (1, 0))), "tree"),
        (dict(bones=((0, 1),)), "edges"),
        (dict(bones=((0, 1), (0, 5))), "edges"),
    ],
)  # fmt: skip
def test_invalid_formats_rejected(change, match):
    base = dict(
        name="bad",
        joint_names=("a", "b", "c"),
        parts={"torso": (0,), "left_arm": (1,), "right_arm": (2,), "left_leg": (), "right_leg": ()},
        bones=((0, 1), (0, 2)),
        left_right=(0, 2, 1),
        hips=(1, 2),
        shoulders=(1, 2),
    )
    with pytest.raises(ValueError, match=match):
        SkeletonFormat(**{**base, **change})


def test_formats_are_frozen_and_hashable():
    fmt = FORMATS["coco17"]
    with pytest.raises(AttributeError):
        fmt.name = "x"  # type: ignore[misc]
    assert len({f: n for n, f in FORMATS.items()}) == len(FORMATS)


def test_a_joint_count_names_its_format():
    from bpmt_fast.model.skeleton import FORMATS, format_with_joints

    assert {count: format_with_joints(count).name for count in (17, 18, 25, 26)} == \
           {17: "coco17", 18: "openpose18", 25: "openpose25", 26: "halpe26"}
    assert len({fmt.num_joints for fmt in FORMATS.values()}) == len(FORMATS)  # a count names one format only
    with pytest.raises(ValueError, match=r"^19 keypoints: expected 17 \(coco17\), 18 \(openpose18\)"):
        format_with_joints(19)

"""Skeleton formats as plain data: joints, body parts, bones and mirror symmetry.

BPMT (Body Part as Modality Transformer) treats each body part as a modality: the joints of a
part are embedded together into one token stream. Every format here is split into the same five
parts, always in the order of ``PART_NAMES``:

* ``torso``     -- head/face joints, neck, shoulders and hips (plus a mid-hip / pelvis joint where
                   the format has one). The head rides with the torso because it is rigidly attached
                   to it during walking and carries little gait signal of its own; splitting it into
                   its own part would give a tiny, noisy modality. This is the original BPMT grouping.
* ``left_arm``  -- elbow, wrist.
* ``right_arm`` -- elbow, wrist.
* ``left_leg``  -- knee, ankle and that side's foot joints (big toe, small toe, heel) if present.
* ``right_leg`` -- same.

Within a part, joints are listed in ascending index order (so legs read knee, ankle, toes, heel in
every format here). The parts of a format are disjoint and cover every joint exactly once.

Joint orders follow the standards they are named after:

* ``coco17``     -- MS-COCO person keypoints (17).
* ``openpose18`` -- OpenPose ``COCO`` model (18): COCO joints re-ordered, with a neck at index 1.
* ``openpose25`` -- OpenPose ``BODY_25``: MidHip at 8, feet at 19-24.
* ``halpe26``    -- AlphaPose Halpe-26: COCO-17, then head, neck, hip (centre), big toes, small
                    toes, heels. The centre hip is called ``mid_hip`` here, as in BODY_25.

Joint names are snake_case with ``left_``/``right_`` prefixes, identical across formats for the same
anatomical point, so joints can be matched by name (see ``SkeletonFormat.coco17_indices``).
``bones`` are (parent, child) edges forming a tree rooted at the neck (nose for COCO-17, which has no
neck); they are used for drawing and bone-length statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "PART_NAMES",
    "COCO17_JOINTS",
    "SkeletonFormat",
    "FORMATS",
    "get_format",
    "COCO17",
    "OPENPOSE18",
    "OPENPOSE25",
    "HALPE26",
]

PART_NAMES: tuple[str, ...] = ("torso", "left_arm", "right_arm", "left_leg", "right_leg")


@dataclass(frozen=True)
class SkeletonFormat:
    name: str
    joint_names: tuple[str, ...]
    parts: dict[str, tuple[int, ...]]
    bones: tuple[tuple[int, int], ...]
    left_right: tuple[int, ...]
    hips: tuple[int, int]  # (left, right)
    shoulders: tuple[int, int]  # (left, right)

    def __post_init__(self) -> None:
        # Store private copies so the module-level formats cannot be mutated through the arguments.
        object.__setattr__(self, "joint_names", tuple(self.joint_names))
        object.__setattr__(self, "parts", {k: tuple(v) for k, v in self.parts.items()})
        object.__setattr__(self, "bones", tuple((int(a), int(b)) for a, b in self.bones))
        object.__setattr__(self, "left_right", tuple(self.left_right))
        self._validate()

    def __hash__(self) -> int:  # `parts` is a dict, so hash the identifying fields only
        return hash((self.name, self.joint_names))

    def _validate(self) -> None:
        j, err = self.num_joints, f"skeleton format {self.name!r}: "
        if len(set(self.joint_names)) != j:
            raise ValueError(err + "duplicate joint names")
        if tuple(self.parts) != PART_NAMES:
            raise ValueError(err + f"parts must be {PART_NAMES}, got {tuple(self.parts)}")
        flat = [i for idx in self.parts.values() for i in idx]
        if sorted(flat) != list(range(j)):
            raise ValueError(err + "parts must be disjoint and cover every joint exactly once")
        if sorted(self.left_right) != list(range(j)) or any(
            self.left_right[self.left_right[i]] != i for i in range(j)
        ):
            raise ValueError(err + "left_right must be an involutive permutation")
        if len(self.bones) != j - 1 or any(not (0 <= i < j) for b in self.bones for i in b):
            raise ValueError(err + f"bones must be {j - 1} edges between valid joint indices")
        children = [c for _, c in self.bones]
        roots = set(range(j)) - set(children)
        if len(set(children)) != j - 1 or len(roots) != 1:
            raise ValueError(err + "bones must form a tree: every joint but one root has one parent")
        seen, stack = set(roots), list(roots)  # reachability from the root rules out cycles
        while stack:
            p = stack.pop()
            for a, c in self.bones:
                if a == p and c not in seen:
                    seen.add(c)
                    stack.append(c)
        if len(seen) != j:
            raise ValueError(err + "bones must form a connected tree")
        for pair in (self.hips, self.shoulders):
            if self.left_right[pair[0]] != pair[1]:
                raise ValueError(err + f"{pair} is not a left/right pair")

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def num_parts(self) -> int:
        return len(self.parts)

    @property
    def part_sizes(self) -> tuple[int, ...]:
        return tuple(len(self.parts[p]) for p in PART_NAMES)

    @property
    def max_part_size(self) -> int:
        return max(self.part_sizes)

    # ---- lookups -----------------------------------------------------------------------------
    def part_index_matrix(self, pad_value: int = -1) -> list[list[int]]:
        """(num_parts, max_part_size) joint indices per part, right-padded with ``pad_value``."""
        m = self.max_part_size
        return [list(self.parts[p]) + [pad_value] * (m - len(self.parts[p])) for p in PART_NAMES]

    @property
    def joint_part(self) -> tuple[int, ...]:
        """Index (into PART_NAMES) of the part each joint belongs to."""
        out = [0] * self.num_joints
        for k, p in enumerate(PART_NAMES):
            for i in self.parts[p]:
                out[i] = k
        return tuple(out)

    def joint_index(self, name: str) -> int:
        try:
            return self.joint_names.index(name)
        except ValueError:
            raise ValueError(
                f"no joint {name!r} in skeleton format {self.name!r}; joints: {', '.join(self.joint_names)}"
            ) from None

    @property
    def coco17_indices(self) -> tuple[int, ...] | None:
        """Index in this format of each COCO-17 joint (COCO order), or None if one is missing."""
        if not set(COCO17_JOINTS) <= set(self.joint_names):
            return None
        return tuple(self.joint_names.index(n) for n in COCO17_JOINTS)


# --------------------------------------------------------------------------------------------------
# COCO-17 (MS-COCO person keypoints)
COCO17_JOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",                  # 0-4
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",            # 5-8
    "left_wrist", "right_wrist", "left_hip", "right_hip",                      # 9-12
    "left_knee", "right_knee", "left_ankle", "right_ankle",                    # 13-16
)  # fmt: skip

COCO17 = SkeletonFormat(
    name="coco17",
    joint_names=COCO17_JOINTS,
    parts={  # exactly the original BPMT grouping
        "torso": (0, 1, 2, 3, 4, 5, 6, 11, 12),
        "left_arm": (7, 9),
        "right_arm": (8, 10),
        "left_leg": (13, 15),
        "right_leg": (14, 16),
    },
    bones=(  # no neck: the nose links the face to both shoulders; shoulders go down to the hips
        (0, 1), (0, 2), (1, 3), (2, 4),                     # face
        (0, 5), (0, 6), (5, 11), (6, 12),                   # trunk
        (5, 7), (7, 9), (6, 8), (8, 10),                    # arms
        (11, 13), (13, 15), (12, 14), (14, 16),             # legs
    ),  # fmt: skip
    left_right=(0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15),
    hips=(11, 12),
    shoulders=(5, 6),
)

# --------------------------------------------------------------------------------------------------
# OpenPose COCO-18 (pose/coco model): right side listed before left, eyes/ears at the end.
OPENPOSE18 = SkeletonFormat(
    name="openpose18",
    joint_names=(
        "nose", "neck",                                                        # 0-1
        "right_shoulder", "right_elbow", "right_wrist",                        # 2-4
        "left_shoulder", "left_elbow", "left_wrist",                           # 5-7
        "right_hip", "right_knee", "right_ankle",                              # 8-10
        "left_hip", "left_knee", "left_ankle",                                 # 11-13
        "right_eye", "left_eye", "right_ear", "left_ear",                       # 14-17
    ),  # fmt: skip
    parts={
        "torso": (0, 1, 2, 5, 8, 11, 14, 15, 16, 17),
        "left_arm": (6, 7),
        "right_arm": (3, 4),
        "left_leg": (12, 13),
        "right_leg": (9, 10),
    },
    bones=(  # OpenPose's POSE_COCO_PAIRS without the two ear-shoulder links (which close cycles)
        (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7),     # arms
        (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),  # legs
        (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),       # head
    ),  # fmt: skip
    left_right=(0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16),
    hips=(11, 8),
    shoulders=(5, 2),
)

# --------------------------------------------------------------------------------------------------
# OpenPose BODY_25: as COCO-18 but with MidHip at 8 (hips shift to 9/12) and six foot joints at 19-24.
OPENPOSE25 = SkeletonFormat(
    name="openpose25",
    joint_names=(
        "nose", "neck",                                                        # 0-1
        "right_shoulder", "right_elbow", "right_wrist",                        # 2-4
        "left_shoulder", "left_elbow", "left_wrist",                           # 5-7
        "mid_hip",                                                             # 8
        "right_hip", "right_knee", "right_ankle",                              # 9-11
        "left_hip", "left_knee", "left_ankle",                                 # 12-14
        "right_eye", "left_eye", "right_ear", "left_ear",                       # 15-18
        "left_big_toe", "left_small_toe", "left_heel",                         # 19-21
        "right_big_toe", "right_small_toe", "right_heel",                      # 22-24
    ),  # fmt: skip
    parts={
        "torso": (0, 1, 2, 5, 8, 9, 12, 15, 16, 17, 18),
        "left_arm": (6, 7),
        "right_arm": (3, 4),
        "left_leg": (13, 14, 19, 20, 21),
        "right_leg": (10, 11, 22, 23, 24),
    },
    bones=(  # OpenPose's POSE_BODY_25_PAIRS without the two ear-shoulder links
        (1, 8), (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7),     # trunk, arms
        (8, 9), (9, 10), (10, 11), (8, 12), (12, 13), (13, 14),     # legs
        (1, 0), (0, 15), (15, 17), (0, 16), (16, 18),               # head
        (14, 19), (19, 20), (14, 21), (11, 22), (22, 23), (11, 24),  # feet
    ),  # fmt: skip
    left_right=(0, 1, 5, 6, 7, 2, 3, 4, 8, 12, 13, 14, 9, 10, 11, 16, 15, 18, 17, 22, 23, 24, 19, 20, 21),
    hips=(12, 9),
    shoulders=(5, 2),
)

# --------------------------------------------------------------------------------------------------
# Halpe-26 (AlphaPose): COCO-17, then head (top), neck, hip centre, and feet interleaved left/right.
HALPE26 = SkeletonFormat(
    name="halpe26",
    joint_names=COCO17_JOINTS + (
        "head", "neck", "mid_hip",                                             # 17-19
        "left_big_toe", "right_big_toe", "left_small_toe", "right_small_toe",  # 20-23
        "left_heel", "right_heel",                                             # 24-25
    ),  # fmt: skip
    parts={
        "torso": (0, 1, 2, 3, 4, 5, 6, 11, 12, 17, 18, 19),
        "left_arm": (7, 9),
        "right_arm": (8, 10),
        "left_leg": (13, 15, 20, 22, 24),
        "right_leg": (14, 16, 21, 23, 25),
    },
    bones=(  # AlphaPose's Halpe-26 drawing pairs, plus neck-nose to attach the face
        (18, 17), (18, 0), (0, 1), (0, 2), (1, 3), (2, 4),          # head
        (18, 5), (18, 6), (5, 7), (7, 9), (6, 8), (8, 10),          # shoulders, arms
        (18, 19), (19, 11), (19, 12),                               # spine, hips
        (11, 13), (13, 15), (12, 14), (14, 16),                     # legs
        (15, 24), (24, 20), (24, 22), (16, 25), (25, 21), (25, 23),  # feet
    ),  # fmt: skip
    left_right=tuple(COCO17.left_right) + (17, 18, 19, 21, 20, 23, 22, 25, 24),
    hips=(11, 12),
    shoulders=(5, 6),
)

FORMATS: dict[str, SkeletonFormat] = {f.name: f for f in (COCO17, OPENPOSE18, OPENPOSE25, HALPE26)}

_ALIASES: dict[str, str] = {
    "coco": "coco17",
    "openpose": "openpose25",
    "body25": "openpose25",
    "openposecoco": "openpose18",
    "halpe": "halpe26",
    "alphapose": "halpe26",
}


def get_format(name: str | SkeletonFormat) -> SkeletonFormat:
    """Look up a format by name or alias (case-insensitive; '-', '_' and spaces ignored)."""
    if isinstance(name, SkeletonFormat):
        return name
    key = str(name).lower().replace("-", "").replace("_", "").replace(" ", "")
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        aliases = ", ".join(f"{a} -> {t}" for a, t in _ALIASES.items())
        raise ValueError(
            f"unknown skeleton format {name!r}; valid names: {', '.join(FORMATS)} (aliases: {aliases})"
        )
    return FORMATS[key]


def format_with_joints(count: int) -> SkeletonFormat:
    """The format with `count` joints (pose files name no format: their joint count tells it); ValueError naming
    the counts there are."""
    for fmt in FORMATS.values():
        if fmt.num_joints == count:
            return fmt
    known = ", ".join(f"{fmt.num_joints} ({fmt.name})" for fmt in FORMATS.values())
    raise ValueError(f"{count} keypoints: expected {known}")

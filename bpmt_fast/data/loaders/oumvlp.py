"""OU-MVLP-Pose (OU-ISIR) JSON release: ``oumvlp:ROOT`` with ``ROOT/SUBJECT/VIEW_SEQ/FRAME_keypoints.json``.

The release (http://www.am.sanken.osaka-u.ac.jp/BiometricDB/GaitLPPose.html) ships two pose sets of the same
10,307 subjects, one from OpenPose and one from AlphaPose, each a folder (``OUMVLP-Pose/openpose``,
``OUMVLP-Pose/alphapose``; the train / test subject list ``ID_list.csv`` sits beside them). Point ``ROOT`` at one
of those folders (a file elsewhere under it is listed in ``LoadReport.ignored``). Below it:

* ``SUBJECT``: the subject id, five digits (``00001``);
* ``VIEW_SEQ``: view and sequence, ``000_00`` (``-`` is accepted too, as in the silhouette release's
  ``000-00``): 14 views ``000 015 030 045 060 075 090 180 195 210 225 240 255 270`` (seven cameras, both
  directions of a round trip) and sequence ``00`` or ``01`` (the subject's two round trips);
* one JSON file per frame in OpenPose's ``--write_json`` format, named after the frame image
  (``0021_keypoints.json``; the frame number is the last run of digits in the name before an optional
  ``_keypoints`` suffix, so other spellings such as ``00001-000_00-0021.json`` work too)::

    {"version": 1.1, "people": [{"pose_keypoints_2d": [x0, y0, c0, x1, y1, c1, ...], ...}, ...]}

  The keypoint count (numbers / 3) picks the skeleton: 18 OpenPose-18 (the release's OpenPose ``COCO`` model and
  its AlphaPose set), 17 COCO-17 (AlphaPose COCO output), 25 BODY_25, 26 Halpe-26; it must be the same in every
  frame of a sequence. A frame with no person (``"people": []``) has no pose and is left out.

Labels: ``subject`` = SUBJECT, ``view`` = the three-digit view, ``condition`` = ``nm`` (OU-MVLP has normal walking
only), ``sequence_id`` = ``SUBJECT/VIEW_SEQ``, ``recording`` = ``SUBJECT/SEQ`` (the 14 views of one round trip come
from the same walk, so a split keeps them together), ``meta`` = ``{"sequence": SEQ, "files": n,
"empty_frames": frames with no person}``; frame times are the frame numbers from the file names.

Person selection (several people in a frame): the walker is tracked exactly as in ``pyskl`` (its module
docstring): every person with a keypoint of confidence > 0 is a candidate (box: its visible keypoints; score: its
mean keypoint confidence; ties in a frame: its position in ``people``), candidates are linked frame to frame by
box overlap into tracklets, the tracklet with the largest total score is the walker's (plus non-overlapping
look-alike tracklets that repair its breaks), one person per frame, and frames without it are dropped (their
numbers are missing from ``frame_times``). The walker need not be first in ``people``.

Bad data: one JSON file is one unit (invalid JSON, no ``people`` list, a person without 3 x V finite numbers,
people of different keypoint counts, a keypoint count that differs from the sequence's, a frame number used twice):
strict raises DataError naming the file, lenient skips that frame and records it. A sequence left with no
usable frame follows ``_common``'s rule (strict: error, lenient: skipped). ``.json`` files at another depth, in a
folder that is not ``VIEW_SEQ``, or without a frame number in the name, and every other visible file, go to
``LoadReport.ignored``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from bpmt_fast.data.loaders._common import Context, build_sequence, find_files, frame_number, load_files, read_text
from bpmt_fast.data.loaders.pyskl import person_detections, walker_poses
from bpmt_fast.data.sequence import DataError, LoadReport, PoseSequence
from bpmt_fast.model.skeleton import format_with_joints

VIEW_SEQ = re.compile(r"^(?P<view>\d{3})[_-](?P<seq>\d{2})$")
_FRAME = re.compile(r"(\d+)(?:_keypoints?)?$")


def frame_of(name: str) -> int | None:
    """The frame number in a file name (``0021_keypoints.json`` -> 21), or None when it has none."""
    m = _FRAME.search(name.removesuffix(".json"))
    if m is None:
        return None
    try:
        return frame_number(m.group(1))
    except ValueError:
        return None


def read_people(path: Path) -> np.ndarray:
    """The frame's people as a (P, V, 3) float32 array (x, y, confidence); P may be 0. ValueError / DataError
    with the reason when the file is malformed."""
    try:
        data = json.loads(read_text(path))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("people"), list):
        got = type(data).__name__ if not isinstance(data, dict) else "an object without a 'people' list"
        raise ValueError(f"expected OpenPose JSON {{'people': [{{'pose_keypoints_2d': [...]}}, ...]}}, got {got}")
    rows = []
    for i, person in enumerate(data["people"]):
        values = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        if not isinstance(values, list):
            raise ValueError(f"person {i} has no 'pose_keypoints_2d' list")
        try:
            row = np.array(values)
        except (ValueError, TypeError, OverflowError):
            row = np.array([None])
        if row.ndim != 1 or row.dtype.kind not in "fiu" or len(row) % 3:
            raise ValueError(f"person {i}: pose_keypoints_2d must be 3 x V numbers (x, y, confidence), got "
                             f"{str(values)[:60]}")
        try:
            format_with_joints(len(row) // 3)
        except ValueError as exc:
            raise ValueError(f"person {i}: {exc}") from None
        if rows and len(row) != len(rows[0]):
            raise ValueError(f"person {i} has {len(row) // 3} keypoints, person 0 has {len(rows[0]) // 3}")
        with np.errstate(all="ignore"):
            row = row.astype(np.float32)
        if not np.isfinite(row).all():
            raise ValueError(f"person {i}: non-finite or out-of-range value in pose_keypoints_2d")
        rows.append(row)
    if not rows:
        return np.zeros((0, 0, 3), np.float32)
    return np.stack(rows).reshape(len(rows), -1, 3)


def load_oumvlp_sequence(folder: Path, files: list[tuple[int, Path]], root: Path, ctx: Context) -> PoseSequence | None:
    """One ``SUBJECT/VIEW_SEQ`` folder's frames (``(frame number, file)``, sorted) -> the walker's sequence."""
    subject, view_seq = folder.relative_to(root).parts
    m = VIEW_SEQ.match(view_seq)
    dets, joints, empty, frames_seen = [], None, 0, {}
    for frame, file in files:
        if frame in frames_seen:
            ctx.fail(file, f"frame {frame} is also {frames_seen[frame].name}")
            continue
        frames_seen[frame] = file
        try:
            people = read_people(file)
        except (ValueError, DataError) as exc:
            ctx.fail(file, str(exc).removeprefix(f"{file}: "))
            continue
        if len(people) == 0:
            empty += 1
            continue
        if joints is None:
            joints = people.shape[1]
        elif people.shape[1] != joints:
            ctx.fail(file, f"{people.shape[1]} keypoints per person, earlier frames of {subject}/{view_seq} have "
                           f"{joints}")
            continue
        dets.extend(person_detections(people[:, None], [frame]))
    poses, times = walker_poses(dets, joints or 18, 3)
    return build_sequence(ctx, poses, times, where=str(folder), subject=subject, view=m["view"], condition="nm",
                          skeleton=format_with_joints(joints or 18).name, sequence_id=f"{subject}/{view_seq}",
                          recording=f"{subject}/{m['seq']}", source=str(folder),
                          meta={"sequence": m["seq"], "files": len(files), "empty_frames": empty})


def load_oumvlp(path: str | os.PathLike, *, lenient: bool = False,
                report: LoadReport | None = None) -> tuple[list[PoseSequence], LoadReport]:
    """Load every ``SUBJECT/VIEW_SEQ/*.json`` sequence under the folder `path`; see the module docstring."""
    ctx = Context(lenient, report)
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: an OU-MVLP-Pose dataset is a folder ROOT/SUBJECT/VIEW_SEQ/*.json (one pose set "
                        f"of the release, e.g. OUMVLP-Pose/openpose)")
    groups: dict[Path, list[tuple[int, Path]]] = {}
    deeper = 0
    for file in find_files(root, ".json", "OU-MVLP-Pose .json", ctx):
        parts = file.relative_to(root).parts
        if len(parts) != 3:
            deeper += len(parts) > 3
            ctx.ignore(file, "not at SUBJECT/VIEW_SEQ/*.json")
        elif not VIEW_SEQ.match(parts[1]):
            ctx.ignore(file, f"folder {parts[1]!r} is not VIEW_SEQ (a 3-digit view and a 2-digit sequence: 000_00)")
        elif (frame := frame_of(parts[2])) is None:
            ctx.ignore(file, "no frame number in the file name")
        else:
            groups.setdefault(file.parent, []).append((frame, file))
    if not groups:
        hint = " (deeper files found: point at one pose set, e.g. OUMVLP-Pose/openpose)" if deeper else ""
        raise DataError(f"{root}: no .json files at SUBJECT/VIEW_SEQ/*.json{hint}")
    folders = sorted(groups, key=lambda p: p.relative_to(root).as_posix())
    return load_files(folders, "oumvlp", lambda f: load_oumvlp_sequence(f, sorted(groups[f]), root, ctx),
                      ctx), ctx.report

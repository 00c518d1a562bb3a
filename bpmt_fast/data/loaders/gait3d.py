"""Gait3D 2D poses: ``<root>/<subject>/camid<C>_videoid<V>/seq<S>/human_crop_f<frame>.txt``.

Each frame file holds one comma-separated line: two leading numbers (the person crop's offset, not joints)
then 17 x (x, y, confidence), COCO-17 pixel coordinates in the crop. Frame numbers can skip (missing
detections): ``frame_times`` are the real frame numbers, sorted numerically. One PoseSequence per ``seq``
folder: ``view`` = ``"camid<C>"``, ``condition`` = ``""``, ``sequence_id`` = ``"<subject>/camid<C>_videoid<V>/seq<S>"``,
``meta`` = ``{"camid", "videoid", "seq", "crop_offset" ((T, 2) float32, the two leading numbers)}``.

Files in a sequence folder that are not ``*f<digits>.txt`` are ignored. A bad frame file (empty, not one
line, not 53 numbers, non-numeric, NaN/inf, all confidences 0) raises DataError naming it (strict) or is
skipped and recorded (lenient); see ``_common`` for the shared rules.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from bpmt_fast.data.loaders._common import Context, build_sequence, frame_number, parse_floats, progress, read_text
from bpmt_fast.data.sequence import DataError, LoadReport, PoseSequence

NUM_JOINTS = 17
NUM_VALUES = 2 + 3 * NUM_JOINTS  # crop offset + joints
_FRAME_RE = re.compile(r"f([0-9]+)\.txt$")
_CAMERA_RE = re.compile(r"^camid([0-9]+)_videoid([0-9]+)$")
_SEQ_RE = re.compile(r"^seq([0-9]+)$")


def parse_frame_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One Gait3D frame file -> (crop offset (2,), joints (17, 3)); DataError naming the file if bad."""
    text = read_text(path)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: empty file")
    if len(lines) > 1:
        raise DataError(f"{path}: expected one line, found {len(lines)}")
    fields = lines[0].strip().split(",")
    if len(fields) != NUM_VALUES:
        raise DataError(f"{path}: expected {NUM_VALUES} comma-separated values (2 crop offsets + "
                        f"{NUM_JOINTS} x (x, y, confidence)), found {len(fields)}")
    try:
        values = parse_floats(fields, "value")
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
    joints = values[2:].reshape(NUM_JOINTS, 3)
    if not (joints[:, 2] > 0).any():
        raise DataError(f"{path}: all joints have zero confidence")
    return values[:2], joints


def _subdirs(path: Path) -> list[Path]:
    with os.scandir(path) as it:
        return sorted((Path(e.path) for e in it if e.is_dir()), key=lambda p: p.name)


def find_sequences(root: Path) -> list[Path]:
    """Sequence folders ``<root>/<subject>/<camera_video>/<seq>``, sorted."""
    return [s for subj in _subdirs(root) for cam in _subdirs(subj) for s in _subdirs(cam)]


def _load_sequence(ctx: Context, root: Path, seq_dir: Path) -> PoseSequence | None:
    frames, found = [], False
    with os.scandir(seq_dir) as it:
        for e in it:
            m = _FRAME_RE.search(e.name)
            if m and e.is_file():
                found = True
                try:
                    frames.append((frame_number(m.group(1)), Path(e.path)))
                except ValueError as exc:
                    ctx.fail(e.path, str(exc))
    frames.sort()
    offsets, poses, times = [], [], []
    for frame, path in frames:
        if times and times[-1] == frame:
            ctx.fail(path, f"duplicate frame number {frame}")
            continue
        try:
            offset, joints = parse_frame_file(path)
        except DataError as exc:
            ctx.fail(path, str(exc).removeprefix(f"{path}: "))
            continue
        offsets.append(offset)
        poses.append(joints)
        times.append(frame)
    seq_id = seq_dir.relative_to(root).as_posix()
    if not found:
        ctx.fail(seq_dir, "empty sequence (no human_crop_f<frame>.txt frame files)")
        return None
    if not poses:
        ctx.fail(seq_dir, "empty sequence (no usable frame)")
        return None
    cam_video = seq_dir.parent.name
    m = _CAMERA_RE.match(cam_video)
    meta = {"camid": m.group(1), "videoid": m.group(2)} if m else {}
    ms = _SEQ_RE.match(seq_dir.name)
    meta["seq"] = ms.group(1) if ms else seq_dir.name
    meta["crop_offset"] = np.stack(offsets)
    return build_sequence(
        ctx, np.stack(poses), np.asarray(times), where=str(seq_dir),
        subject=seq_dir.parent.parent.name, view=f"camid{m.group(1)}" if m else cam_video, condition="",
        skeleton="coco17", sequence_id=seq_id, source=str(seq_dir), meta=meta,
    )


def load_gait3d(root: str | os.PathLike, *, lenient: bool = False,
                report: LoadReport | None = None) -> tuple[list[PoseSequence], LoadReport]:
    """Load every ``<root>/<subject>/<camera_video>/<seq>`` folder; see the module docstring."""
    ctx = Context(lenient, report)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: Gait3D root must be a folder <root>/<subject>/camid<C>_videoid<V>/seq<S>/")
    seq_dirs = find_sequences(root)
    if not seq_dirs:
        raise DataError(f"{root}: no Gait3D sequence folders (<subject>/camid<C>_videoid<V>/seq<S>/) found")
    out = []
    for seq_dir in progress(seq_dirs, "gait3d", unit="seq"):
        seq = _load_sequence(ctx, root, seq_dir)
        if seq is not None:
            out.append(seq)
    ctx.report.loaded += len(out)
    return out, ctx.report

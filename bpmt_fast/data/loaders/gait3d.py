"""Gait3D 2D poses: ``<root>/<subject>/camid<C>_videoid<V>/seq<S>/human_crop_f<frame>.txt``.

Each frame file holds one comma-separated line: two leading numbers (the person crop's offset, not joints)
then 17 x (x, y, confidence), COCO-17 pixel coordinates in the crop. Frame numbers can skip (missing
detections): ``frame_times`` are the real frame numbers, sorted numerically. One PoseSequence per ``seq``
folder: ``view`` = ``"camid<C>"``, ``condition`` = ``""``, ``sequence_id`` = ``"<subject>/camid<C>_videoid<V>/seq<S>"``,
``recording`` = ``"<subject>/camid<C>_videoid<V>"`` (the ``seq`` clips are cut from that one video, so splits
must keep them on one side), ``meta`` = ``{"camid", "videoid", "seq", "crop_offset" ((T, 2) float32, the two
leading numbers)}``.

The layout is checked level by level: any folder name is a subject, but camera folders must be named
``camid<C>_videoid<V>`` and sequence folders ``seq<S>`` (digits). Everything else that is visible goes to
``LoadReport.ignored`` with the reason, in strict mode too (it never raises): stray files at any level, folders
with other names (with a note when frame files lie under them, i.e. sequences at the wrong depth), folders and
non-frame files inside a sequence folder (frame files are ``*f<digits>.txt``), empty subject or camera folders.
Frame files found directly in the root, a subject or a camera folder are reported once per folder, with their count.
Hidden entries (names starting with ``.``) are passed over silently.

A bad frame file (empty, not one line, not 53 numbers, non-numeric, NaN/inf, all confidences 0) raises
DataError naming it (strict) or is skipped and recorded (lenient); see ``_common`` for the shared rules.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from bpmt_fast.data.loaders._common import (Context, build_sequence, frame_number, ignored_summary, is_hidden,
                                           parse_floats, progress, read_text, visible_entries)
from bpmt_fast.data.sequence import DataError, LoadReport, PoseSequence

NUM_JOINTS = 17
NUM_VALUES = 2 + 3 * NUM_JOINTS  # crop offset + joints
_FRAME_RE = re.compile(r"f([0-9]+)\.txt$")
CAMERA_FOLDER = re.compile(r"^camid([0-9]+)_videoid([0-9]+)$")  # a Gait3D type folder: camera and video
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


LAYOUT = "<root>/<subject>/camid<C>_videoid<V>/seq<S>/human_crop_f<frame>.txt"


def find_sequences(root: Path, ctx: Context | None = None) -> list[Path]:
    """Sequence folders ``<root>/<subject>/camid<C>_videoid<V>/seq<S>``, sorted; every other visible entry
    met on the way is recorded in ``ctx.report.ignored`` with the reason."""
    ctx = ctx or Context()
    return [seq for subject in _layout_folders(ctx, root, None, "<subject> folders")
            for camera in _layout_folders(ctx, subject, CAMERA_FOLDER, "camid<C>_videoid<V> folders")
            for seq in _layout_folders(ctx, camera, _SEQ_RE, "seq<S> folders")]


def _layout_folders(ctx: Context, parent: Path, name_re: re.Pattern | None, expected: str) -> list[Path]:
    """The sub-folders of `parent` whose names fit `name_re` (any name when None); the other entries are
    reported as ignored, frame files lying here once for the folder."""
    entries = visible_entries(parent, ctx)
    if entries == []:
        ctx.ignore(parent, f"empty folder; {expected} belong here")
    out, frames = [], 0
    for e in entries or []:
        if e.is_dir():
            if name_re is None or name_re.match(e.name):
                out.append(Path(e.path))
            else:
                ctx.ignore(e.path, f"folder name is not {expected.removesuffix(' folders')}" + _frames_below(e.path))
        elif e.is_file() and _FRAME_RE.search(e.name):
            frames += 1
        else:
            ctx.ignore(e.path, f"stray {_kind(e)}; only {expected} belong here")
    if frames:
        ctx.ignore(parent, f"{_frame_count(frames)} at the wrong depth (layout: {LAYOUT})")
    return out


def _kind(entry: os.DirEntry) -> str:
    return "file" if entry.is_file() else "entry (not a regular file or folder: a broken link?)"


def _frame_count(n: int) -> str:
    return f"{n} frame file{'s' if n != 1 else ''}"


def _frames_below(folder: str) -> str:
    """A note for an ignored folder that holds frame files: its sequences are at the wrong depth."""
    count = 0
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        count += sum(1 for f in files if not is_hidden(f) and _FRAME_RE.search(f))
    return f"; it holds {_frame_count(count)}: sequences at the wrong depth? (layout: {LAYOUT})" if count else ""


def _frame_files(ctx: Context, entries: list[os.DirEntry]) -> tuple[list[tuple[int, Path]], bool]:
    """(frame number, path) of the frame files among a sequence folder's entries, sorted, and whether any file
    is named like one (a name with a bad number is a bad unit, not an ignored entry); the rest is ignored."""
    frames, found = [], False
    for e in entries:
        if e.is_dir():
            ctx.ignore(e.path, "folder inside a sequence folder" + _frames_below(e.path))
            continue
        m = _FRAME_RE.search(e.name)
        if not (m and e.is_file()):
            ctx.ignore(e.path, "not a frame file (human_crop_f<frame>.txt)" if e.is_file()
                       else "not a regular file or folder (a broken link?)")
            continue
        found = True
        try:
            frames.append((frame_number(m.group(1)), Path(e.path)))
        except ValueError as exc:
            ctx.fail(e.path, str(exc))
    return sorted(frames), found


def _load_sequence(ctx: Context, root: Path, seq_dir: Path) -> PoseSequence | None:
    entries = visible_entries(seq_dir, ctx)
    if entries is None:
        return None  # unreadable folder, already reported
    frames, found = _frame_files(ctx, entries)
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
    if not found:
        ctx.fail(seq_dir, "empty sequence (no human_crop_f<frame>.txt frame files)")
        return None
    if not poses:
        ctx.fail(seq_dir, "empty sequence (no usable frame)")
        return None
    camera = CAMERA_FOLDER.match(seq_dir.parent.name)  # find_sequences only yields folders that match
    meta = {"camid": camera.group(1), "videoid": camera.group(2), "seq": _SEQ_RE.match(seq_dir.name).group(1),
            "crop_offset": np.stack(offsets)}
    return build_sequence(
        ctx, np.stack(poses), np.asarray(times), where=str(seq_dir),
        subject=seq_dir.parent.parent.name, view=f"camid{camera.group(1)}", condition="", skeleton="coco17",
        sequence_id=seq_dir.relative_to(root).as_posix(), recording=seq_dir.parent.relative_to(root).as_posix(),
        source=str(seq_dir), meta=meta,
    )


def load_gait3d(root: str | os.PathLike, *, lenient: bool = False,
                report: LoadReport | None = None) -> tuple[list[PoseSequence], LoadReport]:
    """Load every ``<root>/<subject>/<camera_video>/<seq>`` folder; see the module docstring."""
    ctx = Context(lenient, report)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: Gait3D root must be a folder <root>/<subject>/camid<C>_videoid<V>/seq<S>/")
    first_ignored = len(ctx.report.ignored)
    seq_dirs = find_sequences(root, ctx)
    if not seq_dirs:
        raise DataError(f"{root}: no Gait3D sequence folders (<subject>/camid<C>_videoid<V>/seq<S>/) found"
                        + ignored_summary(ctx.report, first_ignored))
    out = []
    for seq_dir in progress(seq_dirs, "gait3d", unit="seq"):
        seq = _load_sequence(ctx, root, seq_dir)
        if seq is not None:
            out.append(seq)
    ctx.report.loaded += len(out)
    return out, ctx.report

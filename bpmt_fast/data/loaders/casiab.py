"""GaitGraph CASIA-B pose CSV: lines ``./001-bg-01-000/000001.jpg,<51 values>`` (17 x (x, y, conf), COCO-17).

The folder part of the image path is the sequence key ``<subject>-<condition>-<run>-<view>``; the image
file name is the frame number. An optional header line (first line whose first field is not such a
path and whose other fields are not all numbers) is skipped, blank lines too; lines can be in any order.
One PoseSequence per key: ``subject`` "001", ``condition`` "bg" (lower-cased), ``view`` "000",
``sequence_id`` "001-bg-01-000", ``meta`` ``{"run": "01"}``, ``frame_times`` sorted.

A bad line (undecodable, bad path, not 51 numbers, non-numeric, NaN/inf, duplicate frame) is one bad unit:
strict raises DataError naming ``<file>:<line>``, lenient skips the line and records it. Frames whose
confidences are all 0 and sequences left empty follow the shared rules (see ``_common``). Given a folder, every
``*.csv`` under it is read; other visible files and empty folders go to ``LoadReport.ignored`` with the reason
(never an error), hidden entries (names starting with ``.``) are passed over silently. Each sequence is its
own recording (``recording`` = "").
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from bpmt_fast.data.loaders._common import (Context, build_sequence, find_files, frame_number, load_files,
                                           parse_floats)
from bpmt_fast.data.sequence import LoadReport, PoseSequence

NUM_JOINTS = 17
NUM_VALUES = 3 * NUM_JOINTS
_PATH_RE = re.compile(r"(?:^|/)([0-9]+)-([A-Za-z]+)-([0-9]+)-([0-9]+)/([0-9]+)\.[A-Za-z]+$")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_line(line: str) -> tuple[str, tuple[str, str, str, str], int, np.ndarray]:
    """One CSV data line -> (sequence_id, (subject, condition, run, view), frame, joints (17, 3));
    ValueError with the reason if malformed."""
    fields = line.split(",")
    image = fields[0].strip().replace("\\", "/")
    m = _PATH_RE.search(image)
    if not m:
        raise ValueError(f"image path {image[:60]!r} is not <subject>-<condition>-<run>-<view>/<frame>.jpg")
    if len(fields) - 1 != NUM_VALUES:
        raise ValueError(f"expected {NUM_VALUES} values (17 x (x, y, confidence)) after the image path, "
                         f"found {len(fields) - 1}")
    joints = parse_floats(fields[1:], "value").reshape(NUM_JOINTS, 3)
    subject, condition, run, view, frame = m.groups()
    return f"{subject}-{condition}-{run}-{view}", (subject, condition.lower(), run, view), frame_number(frame), joints


def _load_csv(ctx: Context, path: Path) -> list[PoseSequence]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        ctx.fail(path, f"cannot read file ({exc.strerror or exc})")
        return []
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    groups: dict[str, dict] = {}
    first = True
    for lineno, bline in enumerate(raw.splitlines(), start=1):
        where = f"{path}:{lineno}"
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError:
            ctx.fail(where, "line is not UTF-8 text")
            first = False
            continue
        if not line.strip():
            continue
        if first:
            first = False
            fields = line.split(",")
            if (len(fields) > 1 and not _PATH_RE.search(fields[0].strip().replace("\\", "/"))
                    and not all(_is_number(f) for f in fields[1:])):
                continue  # header
        try:
            seq_id, labels, frame, joints = parse_line(line)
        except ValueError as exc:
            ctx.fail(where, str(exc))
            continue
        g = groups.setdefault(seq_id, {"labels": labels, "frames": {}})
        if frame in g["frames"]:
            ctx.fail(where, f"duplicate frame {frame} of sequence {seq_id} (first on line {g['frames'][frame][0]})")
            continue
        g["frames"][frame] = (lineno, joints)
    out = []
    for seq_id in sorted(groups):
        g = groups[seq_id]
        frames = sorted(g["frames"])
        subject, condition, run, view = g["labels"]
        seq = build_sequence(
            ctx, np.stack([g["frames"][f][1] for f in frames]), frames, where=f"{path} (sequence {seq_id})",
            subject=subject, view=view, condition=condition, skeleton="coco17", sequence_id=seq_id,
            source=str(path), meta={"run": run},
        )
        if seq is not None:
            out.append(seq)
    if not groups:
        ctx.fail(path, "no pose lines (empty file?)")
    return out


def load_casiab(path: str | os.PathLike, *, lenient: bool = False,
                report: LoadReport | None = None) -> tuple[list[PoseSequence], LoadReport]:
    """Load a GaitGraph CASIA-B CSV file (or every ``*.csv`` under a folder, recursively); see the module
    docstring."""
    ctx = Context(lenient, report)
    files = find_files(Path(path), ".csv", ".csv", ctx)
    return load_files(files, "casiab", lambda f: _load_csv(ctx, f), ctx), ctx.report

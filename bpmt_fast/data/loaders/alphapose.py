"""AlphaPose JSON results (PsyMo layout): ``<root>/<subject>/<ID>_<viewpoint>_<direction>_<run>_<variation>.json``.

Each file is a JSON list of detections ``{"image_id": "5.jpg", "keypoints": [17 x (x, y, score)], "score",
"box": [x, y, w, h], "idx", ...}``; ``image_id`` gives the frame number (an int is accepted too). Without a
``box`` the keypoints' bounding box is used; without ``score`` the mean keypoint score. One PoseSequence per
file: ``subject`` = ``<ID>``, ``view`` = ``<viewpoint>`` ("00", "45", "90"), ``condition`` = ``<variation>``
(nm, bg, cl, ph, txt, wsf, wss), ``meta`` = ``{"direction", "run", "num_detections"}``,
``sequence_id`` = the file's path under the root without ``.json``. A ``.json`` file whose name does not
follow the pattern still loads, with ``subject`` = its folder name and empty view/condition. A folder is
searched recursively; every other visible file (licence, README) or empty folder under it is recorded in
``LoadReport.ignored`` with the reason (never an error), hidden entries (names starting with ``.``, e.g. macOS
``._x.json`` resource files) are passed over silently. Each file is its own recording (``recording`` = "").

Person selection (several people per frame; keep the walking subject, one detection per frame)
-------------------------------------------------------------------------------------------------
1. **Tracklets.** Frames are visited in increasing order. Each detection is linked to an open tracklet
   whose last box overlaps it with IoU >= ``LINK_IOU`` (0.3) and was seen at most ``MAX_GAP`` (5) frames
   before; pairs are assigned greedily, highest IoU first (ties: the higher-scoring detection, then the one
   earlier in the file, then the older tracklet), one detection per tracklet. Unlinked detections start new
   tracklets. Only tracklets whose last box overlaps the detection's are compared (found by a sweep over
   left edges), so linking costs about one step per detection plus one per overlapping pair, not
   detections x tracklets.
2. **Main tracklet** = the one with the largest total detection score (long and confident: the walker is
   the person seen longest and best). Ties: earliest start, then creation order.
3. **Repair breaks.** The walker's tracklet can break when its box jumps (PsyMo has such jumps in
   single-person frames). Other tracklets, by decreasing total score, are added when their frame span
   overlaps no tracklet already kept and they look like the walker: mean score >= ``SCORE_RATIO`` (0.75)
   x the main tracklet's and median box height >= ``HEIGHT_RATIO`` (0.5) x the main's. This keeps small,
   low-scoring bystanders out even in frames where they are the only detection.
4. Frames not covered by a kept tracklet are dropped (their numbers are missing from ``frame_times``).

The rule is deterministic (no randomness, all ties broken by order) and yields at most one person per frame.
A malformed file (invalid JSON, not a list, a detection without 17 x 3 finite numbers, a bad image_id,
box or score) is one bad unit: strict raises DataError naming the file, lenient skips the file.
"""
from __future__ import annotations

import bisect
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bpmt_fast.data.loaders._common import (Context, build_sequence, find_files, frame_number, load_files,
                                           read_text)
from bpmt_fast.data.sequence import DataError, LoadReport, PoseSequence

NUM_JOINTS = 17
LINK_IOU = 0.3
MAX_GAP = 5
SCORE_RATIO = 0.75
HEIGHT_RATIO = 0.5
_NAME_RE = re.compile(r"^(?P<id>\d+)_(?P<view>\d+)_(?P<direction>\d+)_(?P<run>\d+)_(?P<variation>[A-Za-z]+)$")
_IMAGE_RE = re.compile(r"([0-9]+)(?:\.[A-Za-z0-9]+)?$")


@dataclass
class Detection:
    frame: int
    keypoints: np.ndarray  # (17, 3) float32
    score: float
    box: tuple[float, float, float, float]  # x, y, w, h
    order: int  # position in the file (tie-breaks)


def _numbers(values, what: str, count: int) -> np.ndarray:
    """`count` finite numbers (JSON ints/floats) as float64; ValueError with the reason otherwise."""
    if not isinstance(values, list) or len(values) != count:
        n = len(values) if isinstance(values, list) else type(values).__name__
        raise ValueError(f"{what} must be a list of {count} numbers, got {n}")
    try:
        arr = np.array(values)
    except (ValueError, TypeError, OverflowError):
        arr = np.array([None])
    if arr.ndim != 1 or arr.dtype.kind not in "fiu":  # strings, null, nested lists, huge ints, all-bool
        raise ValueError(f"{what} must be {count} numbers, got {str(values)[:60]}")
    arr = arr.astype(np.float64)
    bad = ~(np.isfinite(arr) & (np.abs(arr) <= 3.0e38))
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"{what} value {k} is not finite or out of range: {arr[k]}")
    return arr


def _frame_number(image_id) -> int:
    if isinstance(image_id, str):
        head = image_id.rsplit(".", 1)[0]
        if head.isascii() and head.isdigit():  # fast path: "5.jpg"
            return frame_number(head)
        m = _IMAGE_RE.search(image_id.strip().replace("\\", "/").rsplit("/", 1)[-1])
        if m:
            return frame_number(m.group(1))
    elif isinstance(image_id, int) and not isinstance(image_id, bool):
        return frame_number(str(image_id))
    raise ValueError(f"image_id {str(image_id)[:40]!r} has no frame number")


def _rows(rows: list, index: list[int], what: str, width: int) -> np.ndarray:
    """Stack lists of `width` JSON numbers into a (len(rows), width) float64 array in one go; on failure
    find the first bad row and raise ValueError naming its detection."""
    try:
        arr = np.array(rows) if rows else np.zeros((0, width))
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is None or arr.dtype.kind not in "fiu" or arr.shape != (len(rows), width):
        for k, row in enumerate(rows):
            _numbers(row, f"detection {index[k]}: {what}", width)
        raise ValueError(f"{what}: not numbers")  # pragma: no cover (a row above raises)
    arr = arr.astype(np.float64)
    bad = ~(np.isfinite(arr) & (np.abs(arr) <= 3.0e38))
    if bad.any():
        k, j = np.argwhere(bad)[0]
        raise ValueError(f"detection {index[k]}: {what} value {j} is not finite or out of range: {arr[k, j]}")
    return arr


def parse_detections(data) -> list[Detection]:
    """AlphaPose JSON content -> detections; ValueError with the reason if anything is malformed.

    A missing (or null) ``score`` becomes the mean keypoint score; a missing (or null) ``box`` the
    bounding box of the keypoints with a positive score (of all keypoints if none)."""
    if not isinstance(data, list):
        raise ValueError(f"expected a JSON list of detections, got {type(data).__name__}")
    frames, kps, scores, score_at, boxes, box_at = [], [], [], [], [], []
    for i, d in enumerate(data):
        if not isinstance(d, dict):
            raise ValueError(f"detection {i} is not an object")
        if "image_id" not in d or "keypoints" not in d:
            raise ValueError(f"detection {i} lacks image_id or keypoints")
        try:
            frames.append(_frame_number(d["image_id"]))
        except ValueError as exc:
            raise ValueError(f"detection {i}: {exc}") from None
        kp = d["keypoints"]
        if not isinstance(kp, list) or len(kp) != 3 * NUM_JOINTS:
            n = len(kp) if isinstance(kp, list) else type(kp).__name__
            raise ValueError(f"detection {i}: keypoints must be {NUM_JOINTS} x (x, y, score) = "
                             f"{3 * NUM_JOINTS} numbers, got {n}")
        kps.append(kp)
        if d.get("score") is not None:
            scores.append([d["score"]])
            score_at.append(i)
        if d.get("box") is not None:
            boxes.append(d["box"])
            box_at.append(i)
            if not isinstance(d["box"], list) or len(d["box"]) != 4:
                raise ValueError(f"detection {i}: box must be [x, y, w, h]")
    n = len(frames)
    kp_arr = _rows(kps, list(range(n)), "keypoints", 3 * NUM_JOINTS).astype(np.float32).reshape(n, NUM_JOINTS, 3)
    conf = kp_arr[:, :, 2]
    score = conf.mean(axis=1).astype(np.float64)
    score[score_at] = _rows(scores, score_at, "score", 1)[:, 0]
    visible = conf > 0
    visible[~visible.any(axis=1)] = True
    lo = np.where(visible[..., None], kp_arr[..., :2], np.inf).min(axis=1)
    hi = np.where(visible[..., None], kp_arr[..., :2], -np.inf).max(axis=1)
    box = np.concatenate([lo, hi - lo], axis=1).astype(np.float64)
    box[box_at] = _rows(boxes, box_at, "box", 4)
    return [Detection(frames[i], kp_arr[i], float(score[i]), tuple(box[i].tolist()), i) for i in range(n)]


def _iou(a, b) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = max(a[2], 0) * max(a[3], 0) + max(b[2], 0) * max(b[3], 0) - inter
    return inter / union if union > 0 else 0.0


def _overlapping_pairs(det_boxes: list, track_boxes: list) -> list[tuple[int, int]]:
    """The (detection, track) index pairs whose boxes ([x, y, w, h]) overlap, without trying every pair.

    With the tracks sorted by left edge, a detection at [x, x + w] can only meet the run of tracks whose left
    edge lies in [x - widest track, x + w] (two binary searches; a tiny margin keeps rounding from cutting a
    pair at the window's edge); the run is then checked exactly on both axes with the comparisons ``_iou``
    makes, so a pair left out has IoU 0. The work is the boxes (times a log) plus the pairs close in x,
    not detections x tracks.
    """
    if not det_boxes or not track_boxes:
        return []
    order = sorted(range(len(track_boxes)), key=lambda j: track_boxes[j][0])
    left = [track_boxes[j][0] for j in order]
    widest = max(0.0, max(b[2] for b in track_boxes))
    pairs = []
    for i, (x, y, w, h) in enumerate(det_boxes):
        lo = bisect.bisect_left(left, x - widest - 1e-9 * (abs(x) + widest + 1.0))
        hi = bisect.bisect_right(left, x + w)
        for j in order[lo:hi]:
            bx, by, bw, bh = track_boxes[j]
            if bx < x + w and bx + bw > x and by < y + h and by + bh > y:
                pairs.append((i, j))
    return pairs


def _tracklets(dets: list[Detection]) -> list[list[Detection]]:
    """Step 1 of the module docstring. Only tracklets seen within MAX_GAP frames are live, and a detection is
    compared only with the live tracklets its box overlaps (``_overlapping_pairs``): a frame costs about its
    detections, however many people the file holds."""
    by_frame: dict[int, list[Detection]] = {}
    for d in dets:
        by_frame.setdefault(d.frame, []).append(d)
    tracks: list[list[Detection]] = []
    live: list[int] = []  # tracklets seen within MAX_GAP frames
    for frame in sorted(by_frame):
        cur = sorted(by_frame[frame], key=lambda d: (-d.score, d.order))
        live = [j for j in live if frame - tracks[j][-1].frame <= MAX_GAP]
        last = [tracks[j][-1].box for j in live]
        pairs = []
        for i, k in _overlapping_pairs([d.box for d in cur], last):
            iou = _iou(cur[i].box, last[k])
            if iou >= LINK_IOU:
                pairs.append((iou, i, live[k]))
        pairs.sort(key=lambda p: (-p[0], p[1], p[2]))  # highest IoU first, ties by detection rank, then age
        used_d, used_t = set(), set()
        for _, i, j in pairs:
            if i in used_d or j in used_t:
                continue
            used_d.add(i)
            used_t.add(j)
            tracks[j].append(cur[i])
        for i, d in enumerate(cur):
            if i not in used_d:
                live.append(len(tracks))
                tracks.append([d])
    return tracks


def select_walker(dets: list[Detection]) -> list[Detection]:
    """The walking subject's detections, one per frame, sorted by frame (rule in the module docstring)."""
    tracks = _tracklets(dets)
    if not tracks:
        return []
    total = [sum(d.score for d in t) for t in tracks]
    mean_score = [total[k] / len(t) for k, t in enumerate(tracks)]
    height = [float(np.median([d.box[3] for d in t])) for t in tracks]
    order = sorted(range(len(tracks)), key=lambda k: (-total[k], tracks[k][0].frame, k))
    main = order[0]
    kept = [main]
    spans = [(tracks[main][0].frame, tracks[main][-1].frame)]  # the kept frame spans, disjoint, sorted
    for k in order[1:]:
        first, last = tracks[k][0].frame, tracks[k][-1].frame
        if _overlaps(spans, first, last):
            continue
        if mean_score[k] >= SCORE_RATIO * mean_score[main] and height[k] >= HEIGHT_RATIO * height[main]:
            kept.append(k)
            bisect.insort(spans, (first, last))
    return sorted((d for k in kept for d in tracks[k]), key=lambda d: d.frame)


def _overlaps(spans: list[tuple[int, int]], first: int, last: int) -> bool:
    """Whether [first, last] meets one of `spans` (disjoint, sorted): only the last span starting at or before
    `last` can, because the ends of disjoint sorted spans are sorted too."""
    k = bisect.bisect_right(spans, (last, math.inf)) - 1
    return k >= 0 and spans[k][1] >= first


def _labels(path: Path, root: Path) -> dict:
    m = _NAME_RE.match(path.stem)
    rel = path.relative_to(root).with_suffix("").as_posix() if path != root else path.stem
    if m:
        return dict(subject=m["id"], view=m["view"], condition=m["variation"].lower(), sequence_id=rel,
                    meta={"direction": m["direction"], "run": m["run"]})
    subject = path.parent.name
    return dict(subject=subject, view="", condition="", sequence_id=rel, meta={})


def load_alphapose_file(path: Path, root: Path | None = None, ctx: Context | None = None) -> PoseSequence | None:
    """One AlphaPose JSON file -> the walker's PoseSequence (None if skipped in lenient mode)."""
    ctx = ctx or Context()
    root = root or path
    try:
        dets = parse_detections(json.loads(read_text(path)))
    except DataError as exc:
        ctx.fail(path, str(exc).removeprefix(f"{path}: "))
        return None
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        reason = f"invalid JSON ({exc})" if isinstance(exc, json.JSONDecodeError) else str(exc)
        ctx.fail(path, reason if not isinstance(exc, RecursionError) else "JSON nested too deeply")
        return None
    labels = _labels(path, root)
    labels["meta"]["num_detections"] = len(dets)
    track = select_walker(dets)
    poses = np.stack([d.keypoints for d in track]) if track else np.zeros((0, NUM_JOINTS, 3), np.float32)
    return build_sequence(ctx, poses, [d.frame for d in track], where=str(path), skeleton="coco17",
                          source=str(path), **labels)


def load_alphapose(path: str | os.PathLike, *, lenient: bool = False,
                   report: LoadReport | None = None) -> tuple[list[PoseSequence], LoadReport]:
    """Load one AlphaPose JSON file or every ``*.json`` under a folder (recursively); see the module docstring."""
    ctx = Context(lenient, report)
    path = Path(path)
    files = find_files(path, ".json", "AlphaPose .json", ctx)
    return load_files(files, "alphapose", lambda f: load_alphapose_file(f, path, ctx), ctx), ctx.report

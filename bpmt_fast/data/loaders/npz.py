"""Generic ``.npz`` sequences: one file per sequence, or a folder of them (searched recursively).

Entries: ``poses`` (T, J, C) numbers, C = 3 (x, y, confidence) or 4 (x, y, z, confidence), required;
optional 0-d string (or integer) arrays ``subject``, ``view``, ``condition``, ``skeleton`` (default
"coco17"; any name or alias of ``bpmt_fast.model.skeleton.get_format``, checked against J) and
``sequence_id`` (default: the path under the folder without ``.npz``, or the file stem) and ``recording``
(the video the clip was cut from; clips sharing it stay on one side of a split; default "": the file is its
own recording); optional ``frame_times`` (T,) integers (default 0..T-1). Missing labels are "". Files are read
with ``np.load(path, allow_pickle=False)``: object arrays (pickles) are refused, never executed.
A bad file is one unit (strict: DataError naming it; lenient: skipped and recorded). Other visible files and
empty folders under a folder go to ``LoadReport.ignored`` with the reason (never an error); hidden entries
(names starting with ``.``) are passed over silently.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bpmt_fast.data.loaders._common import MAX_FRAME, Context, build_sequence, find_files, load_files
from bpmt_fast.data.sequence import LoadReport, PoseSequence
from bpmt_fast.model.skeleton import get_format

_LABELS = ("subject", "view", "condition", "skeleton", "sequence_id", "recording")


def _scalar_text(arr: np.ndarray, name: str) -> str:
    if arr.ndim != 0 and arr.size != 1:
        raise ValueError(f"{name} must be a 0-d string array, got shape {arr.shape}")
    value = arr.reshape(()).item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if arr.dtype.kind not in "USiub":
        raise ValueError(f"{name} must be a string, got dtype {arr.dtype}")
    return str(value)


def _read(path: Path) -> dict:
    """Read and check the arrays of one file; ValueError with the reason if anything is wrong."""
    try:
        obj = np.load(path, allow_pickle=False)
    except Exception as exc:  # corrupt archives raise many kinds (BadZipFile, zlib.error, EOFError, ...)
        raise ValueError(f"cannot read .npz ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz archive (a single .npy array?)")
    with obj as npz:
        if "poses" not in npz.files:
            raise ValueError(f"no 'poses' array (entries: {', '.join(npz.files) or 'none'})")
        try:
            data = {k: npz[k] for k in ("poses", "frame_times", *_LABELS) if k in npz.files}
        except Exception as exc:  # object arrays refused (allow_pickle=False), truncated members, ...
            raise ValueError(f"cannot read .npz entry ({type(exc).__name__}: {exc})") from None
    poses = data["poses"]
    if poses.dtype.kind not in "fiu" or poses.ndim != 3 or poses.shape[2] not in (3, 4):
        raise ValueError(f"poses must be a (T, J, 3 or 4) numeric array, got {poses.dtype} {poses.shape}")
    out = {"poses": poses}
    for name in _LABELS:
        if name in data:
            out[name] = _scalar_text(data[name], name)
    if "frame_times" in data:
        ft = data["frame_times"]
        if ft.shape != (len(poses),) or ft.dtype.kind not in "fiu":
            raise ValueError(f"frame_times must be ({len(poses)},) integers, got {ft.dtype} {ft.shape}")
        if ft.dtype.kind == "f" and not (np.isfinite(ft).all() and (ft == np.round(ft)).all()):
            raise ValueError("frame_times must be integers")
        if len(ft) and (ft.min() < 0 or ft.max() > MAX_FRAME):
            raise ValueError("frame_times out of range")
        out["frame_times"] = ft.astype(np.int64)
    skeleton = out.get("skeleton", "coco17")
    fmt = get_format(skeleton)  # ValueError with the valid names if unknown
    if fmt.num_joints != poses.shape[1]:
        raise ValueError(f"skeleton {fmt.name!r} has {fmt.num_joints} joints but poses have {poses.shape[1]}")
    out["skeleton"] = fmt.name
    return out


def load_npz_file(path: Path, root: Path | None = None, ctx: Context | None = None) -> PoseSequence | None:
    ctx = ctx or Context()
    try:
        data = _read(path)
    except ValueError as exc:
        ctx.fail(path, str(exc))
        return None
    default_id = path.relative_to(root).with_suffix("").as_posix() if root and root != path else path.stem
    poses = data["poses"]
    with np.errstate(all="ignore"):  # values beyond float32 become inf and are reported as non-finite
        poses = poses.astype(np.float32)
    return build_sequence(
        ctx, poses, data.get("frame_times", np.arange(len(poses))), where=str(path),
        subject=data.get("subject", ""), view=data.get("view", ""), condition=data.get("condition", ""),
        skeleton=data["skeleton"], sequence_id=data.get("sequence_id", default_id),
        recording=data.get("recording", ""), source=str(path),
    )


def load_npz(path: str | os.PathLike, *, lenient: bool = False,
             report: LoadReport | None = None) -> tuple[list[PoseSequence], LoadReport]:
    """Load one ``.npz`` file or every ``*.npz`` under a folder; see the module docstring."""
    ctx = Context(lenient, report)
    path = Path(path)
    files = find_files(path, ".npz", ".npz", ctx)
    root = path if path.is_dir() else None  # a single file keeps its name as the sequence id
    return load_files(files, "npz", lambda f: load_npz_file(f, root, ctx), ctx), ctx.report

"""OpenGait / FastPoseGait pose datasets: ``ROOT/SUBJECT/TYPE/VIEW/*.pkl``, one ``(T, V, C)`` array per file.

This is how CASIA-B-Pose, OU-MVLP-Pose, GREW-Pose and Gait3D-Pose are distributed for those toolkits (e.g.
``001/nm-01/090/090.pkl``). C = 3 (x, y, confidence) or 2 (x, y; confidence 1); V picks the skeleton: 17 COCO-17,
18 OpenPose-18, 25 BODY_25, 26 Halpe-26. Labels come from the folders: subject, type (condition: the letters
before "-NN", e.g. "nm" for "nm-01", else the whole type), view. Gait3D's layout is
``SUBJECT/camidC_videoidV/seqS``: there the view is the camera ``camidC`` (as the ``gait3d`` loader has it, so
the camera-based ``reid`` protocol reads cameras) and the condition is empty. The whole type is kept as ``meta["type"]``
("nm-01", OU-MVLP's "00"), which the published partitions' gallery / probe rules read
(``bpmt_fast.data.splits.partition_split``); the sequence id is ``SUBJECT/TYPE/VIEW`` (plus the file stem when a
view folder holds several files), so ``SUBJECT-TYPE-VIEW`` is OpenGait's name of it in Gait3D's ``PROBE_SET``;
the recording is ``SUBJECT/TYPE`` (the views of one walk stay on one side of a split). Files are read with
``bpmt_fast.data.safe_pickle`` (never ``pickle.load``): a pickle that names anything but containers, numbers,
strings and NumPy arrays is refused.
A bad file is one unit (strict: DataError naming it; lenient: skipped and recorded); ``.pkl`` files at another
depth and other visible entries go to ``LoadReport.ignored``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from bpmt_fast.data.loaders._common import Context, build_sequence, find_files, load_files
from bpmt_fast.data.loaders.gait3d import CAMERA_FOLDER
from bpmt_fast.data.safe_pickle import UnsafePickleError, load_pickle
from bpmt_fast.data.sequence import DataError, LoadReport, PoseSequence
from bpmt_fast.model.skeleton import format_with_joints

_TYPE = re.compile(r"^([A-Za-z]+)-\d+$")


def _read(path: Path) -> tuple[np.ndarray, str]:
    """The file's `(T, V, 3)` float32 poses and skeleton name; ValueError / DataError with the reason."""
    poses = load_pickle(path)
    if not isinstance(poses, np.ndarray) or poses.dtype.kind not in "fiu" or poses.ndim != 3 \
            or poses.shape[2] not in (2, 3):
        got = f"{poses.dtype} array {poses.shape}" if isinstance(poses, np.ndarray) else type(poses).__name__
        raise ValueError(f"expected one (T, V, 2 or 3) numeric array (x, y[, confidence]), got {got}")
    skeleton = format_with_joints(poses.shape[1]).name
    with np.errstate(all="ignore"):  # values beyond float32 become inf and are reported as non-finite
        poses = poses.astype(np.float32)
    if poses.shape[2] == 2:
        poses = np.concatenate([poses, np.ones_like(poses[..., :1])], axis=2)  # (T, V, 3): confidence 1
    return poses, skeleton


def load_opengait_file(path: Path, root: Path, ctx: Context, several: bool) -> PoseSequence | None:
    subject, type_, view = path.relative_to(root).parts[:3]
    try:
        poses, skeleton = _read(path)
    except (ValueError, DataError) as exc:
        if isinstance(exc, UnsafePickleError) and not ctx.lenient:
            raise  # strict: the refusal keeps its own type
        ctx.fail(path, str(exc).removeprefix(f"{path}: "))
        return None
    sequence_id = f"{subject}/{type_}/{view}" + (f"/{path.stem}" if several else "")
    camera, kind = CAMERA_FOLDER.match(type_), _TYPE.match(type_)
    if camera:  # Gait3D: SUBJECT/camidC_videoidV/seqS, the camera is the view (as the gait3d loader names it)
        view, condition = f"camid{camera.group(1)}", ""
    else:
        condition = kind.group(1) if kind else type_
    return build_sequence(ctx, poses, np.arange(len(poses)), where=str(path), subject=subject, view=view,
                          condition=condition, skeleton=skeleton, sequence_id=sequence_id,
                          recording=f"{subject}/{type_}", source=str(path), meta={"type": type_})


def load_opengait(path: str | os.PathLike, *, lenient: bool = False,
                  report: LoadReport | None = None) -> tuple[list[PoseSequence], LoadReport]:
    """Load every ``SUBJECT/TYPE/VIEW/*.pkl`` under the folder `path`; see the module docstring."""
    ctx = Context(lenient, report)
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: an OpenGait pose dataset is a folder ROOT/SUBJECT/TYPE/VIEW/*.pkl")
    files = []
    for file in find_files(root, ".pkl", ".pkl", ctx):
        if len(file.relative_to(root).parts) == 4:
            files.append(file)
        else:
            ctx.ignore(file, "not at SUBJECT/TYPE/VIEW/*.pkl")
    if not files:
        raise DataError(f"{root}: no .pkl files at SUBJECT/TYPE/VIEW/*.pkl")
    per_folder: dict[Path, int] = {}
    for file in files:
        per_folder[file.parent] = per_folder.get(file.parent, 0) + 1
    return load_files(files, "opengait", lambda f: load_opengait_file(f, root, ctx, per_folder[f.parent] > 1),
                      ctx), ctx.report

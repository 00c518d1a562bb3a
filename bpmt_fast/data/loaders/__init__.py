"""Pose-data loaders: every format yields ``PoseSequence`` records plus a ``LoadReport``.

One entry point::

    sequences, report = load_dataset("gait3d:../shared/data/gait3d_sample")
    sequences, report = load_dataset("alphapose:../shared/data/psymo_alphapose", lenient=True)

Schemes (``SCHEMES``): ``gait3d:FOLDER`` (Gait3D pose txt), ``alphapose:FOLDER|FILE`` (AlphaPose JSON,
PsyMo layout), ``casiab:FILE.csv`` (GaitGraph CASIA-B CSV; a folder of CSVs works too), ``npz:FILE|FOLDER``,
``opengait:FOLDER`` (OpenGait / FastPoseGait pose ``.pkl``, read without ``pickle.load``), ``pyskl:FILE.pkl``
(PYSKL / mmaction2 skeleton annotations, read the same way; a folder of them works too), ``oumvlp:FOLDER``
(OU-MVLP-Pose OpenPose-format JSON, ``SUBJECT/VIEW_SEQ/FRAME_keypoints.json``). Loaders yield each file's own
skeleton (``PoseSequence.skeleton``); ``bpmt_fast.data.convert`` converts between formats by joint name.
Each format's module documents its layout and labels; ``_common`` documents the bad-data rules
(strict mode raises ``DataError`` naming the file and the problem, lenient mode skips the bad
file/line/frame and records ``(source, reason)`` in ``report.skipped``) and the layout rule: every visible
file or folder a loader does not load (README, stray file, folder at the wrong depth) is listed in
``report.ignored`` with the reason, in both modes; ``str(report)`` shows both lists.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from bpmt_fast.data.loaders.alphapose import load_alphapose, select_walker
from bpmt_fast.data.loaders.casiab import load_casiab
from bpmt_fast.data.loaders.gait3d import load_gait3d
from bpmt_fast.data.loaders.npz import load_npz
from bpmt_fast.data.loaders.opengait import load_opengait
from bpmt_fast.data.loaders.oumvlp import load_oumvlp
from bpmt_fast.data.loaders.pyskl import load_pyskl
from bpmt_fast.data.sequence import DataError, LoadReport, PoseSequence

__all__ = [
    "SCHEMES",
    "load_dataset",
    "load_gait3d",
    "load_alphapose",
    "load_casiab",
    "load_npz",
    "load_opengait",
    "load_pyskl",
    "load_oumvlp",
    "select_walker",
    "DataError",
    "LoadReport",
    "PoseSequence",
]

Loader = Callable[..., "tuple[list[PoseSequence], LoadReport]"]

SCHEMES: dict[str, Loader] = {
    "gait3d": load_gait3d,
    "alphapose": load_alphapose,
    "casiab": load_casiab,
    "npz": load_npz,
    "opengait": load_opengait,
    "pyskl": load_pyskl,
    "oumvlp": load_oumvlp,
}
_USAGE = ("gait3d:FOLDER, alphapose:FOLDER_OR_FILE, casiab:FILE.csv, npz:FILE_OR_FOLDER, opengait:FOLDER, "
          "pyskl:FILE.pkl, oumvlp:FOLDER")


def load_dataset(spec: str | os.PathLike, *, lenient: bool = False) -> tuple[list[PoseSequence], LoadReport]:
    """Load a dataset named ``SCHEME:PATH``; returns the sequences and a report of what was left out.

    Unknown scheme or missing path: DataError listing the valid schemes. Strict (default): any bad file
    raises DataError naming it. ``lenient=True``: bad files/lines/frames are skipped and recorded in
    ``report.skipped``. Entries outside the format's layout are listed in ``report.ignored`` in both modes.
    """
    spec = os.fspath(spec)
    scheme, sep, path = spec.partition(":")
    loader = SCHEMES.get(scheme.strip().lower()) if sep else None
    if loader is None:
        raise DataError(f"unknown dataset spec {spec!r}: expected SCHEME:PATH with one of {_USAGE}")
    if not path.strip():
        raise DataError(f"dataset spec {spec!r} has no path; valid schemes: {_USAGE}")
    target = Path(path).expanduser()
    if not target.exists():
        raise DataError(f"{target}: no such file or folder (spec {spec!r}); valid schemes: {_USAGE}")
    return loader(target, lenient=lenient)

"""The one record every loader yields: a pose sequence with its identity labels."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

# CASIA-B's sequence name, SUBJECT-TYPE-NN-VIEW ("001-bg-01-090"), as PYSKL frame_dirs and GaitGraph CSVs carry it
CASIA_B_NAME = re.compile(r"^(?P<subject>\d+)-(?P<type>[A-Za-z]+)-(?P<number>\d+)-(?P<view>\d+)$")


class DataError(ValueError):
    """A file or sequence that cannot be used; the message names the file and the problem."""


@dataclass
class PoseSequence:
    poses: np.ndarray  # (T, J, C) float32: x, y[, z], confidence in [0, 1]; confidence 0 = joint missing
    subject: str  # identity label
    view: str  # viewpoint or camera id ("" when unknown)
    condition: str = ""  # walking condition: nm, bg, cl, ... ("" when unknown)
    frame_times: np.ndarray | None = None  # (T,) int frame numbers (may skip: missing detections)
    skeleton: str = "coco17"  # joint layout, see bpmt_fast.model.skeleton
    sequence_id: str = ""  # unique within a dataset, e.g. "0000/camid0_videoid2/seq0"
    source: str = ""  # file or folder it came from
    meta: dict = field(default_factory=dict)
    recording: str = ""  # the continuous video this clip was cut from ("" = the clip is its own recording)

    def __post_init__(self):
        self.poses = np.asarray(self.poses, dtype=np.float32)
        if self.poses.ndim != 3:
            raise DataError(f"{self.source or self.sequence_id}: poses must be (T, J, C), got shape {self.poses.shape}")
        if self.frame_times is None:
            self.frame_times = np.arange(len(self.poses))
        self.frame_times = np.asarray(self.frame_times, dtype=np.int64)
        if len(self.frame_times) != len(self.poses):
            raise DataError(f"{self.source or self.sequence_id}: {len(self.frame_times)} frame times for "
                            f"{len(self.poses)} frames")

    @property
    def num_frames(self) -> int:
        return self.poses.shape[0]

    @property
    def recording_id(self) -> str:
        """Clips of one recording share it (Gait3D: ``<subject>/camid<C>_videoid<V>``); splits keep them together."""
        return self.recording or self.sequence_id


@dataclass
class LoadReport:
    """What a load left out, and why.

    ``skipped``: bad data (a corrupt file, line or frame) that lenient loading dropped; strict loading raises
    DataError instead, so in strict mode it stays empty. ``ignored``: files and folders that are not part of the
    format's layout (a README, a stray file, a folder at the wrong depth or with a name the layout does not
    allow); they are recorded in both modes and never raise. Both are lists of ``(path, reason)``.
    """

    loaded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): bad data
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (file or folder, reason): outside the layout

    SHOWN = 20  # entries listed per kind in __str__; the rest are counted

    def skip(self, source: str, reason: str) -> None:
        self.skipped.append((source, reason))

    def ignore(self, path: str, reason: str) -> None:
        self.ignored.append((path, reason))

    def __str__(self) -> str:
        lines = [f"loaded {self.loaded} sequences, skipped {len(self.skipped)}, ignored {len(self.ignored)}"]
        for kind, entries in (("skipped", self.skipped), ("ignored", self.ignored)):
            lines += [f"  {kind} {path}: {reason}" for path, reason in entries[:self.SHOWN]]
            if len(entries) > self.SHOWN:
                lines.append(f"  ... and {len(entries) - self.SHOWN} more {kind}")
        return "\n".join(lines)

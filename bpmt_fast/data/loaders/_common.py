"""Shared machinery of the loaders: strict/lenient error handling, number parsing, sequence checks.

Bad-data rules (the same for every format):

* The unit a loader can skip is the smallest thing that is bad on its own: one Gait3D frame file, one
  CSV line, one AlphaPose JSON file, one ``.npz`` file.
* **Strict** (default): the first problem raises ``DataError("<file>: <problem>")``.
* **Lenient**: the bad unit is skipped and recorded in the ``LoadReport`` as ``(source, reason)``; loading goes on.
* Coordinates must be finite (after conversion to float32): NaN / inf / overflow is a bad unit.
* Confidences are clipped to [0, 1] (AlphaPose scores can exceed 1 slightly).
* A frame whose every joint has confidence 0 carries no pose: strict raises, lenient drops the frame
  and records it.
* A sequence with no usable frame left is an error in strict mode and skipped (recorded) in lenient mode.

Layout rules (the same for every format): a loader walks the whole folder it is given, and every visible file
or folder it does not load (a README, a stray file, a file with another suffix, a folder the format's layout
does not allow) is recorded in ``LoadReport.ignored`` as ``(path, reason)``. That is not an error, in strict
mode either. Hidden entries (names starting with ``.``: ``.git``, ``.DS_Store``, macOS ``._*`` resource files)
are passed over silently. Symbolic links are followed; a link back to a folder already walked is recorded.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from bpmt_fast.data.sequence import DataError, LoadReport, PoseSequence

try:  # tqdm is a declared dependency; degrade to a plain iterator if it is missing
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # pragma: no cover
    _tqdm = None


class Context:
    """Carries the strict/lenient choice and the report through one load."""

    def __init__(self, lenient: bool = False, report: LoadReport | None = None):
        self.lenient = bool(lenient)
        self.report = report if report is not None else LoadReport()

    def fail(self, source: str | os.PathLike, reason: str) -> None:
        """Strict: raise DataError naming `source`. Lenient: record the skip and return."""
        if not self.lenient:
            raise DataError(f"{source}: {reason}")
        self.report.skip(str(source), reason)

    def ignore(self, path: str | os.PathLike, reason: str) -> None:
        """An entry outside the format's layout: recorded in both modes, never an error."""
        self.report.ignore(str(path), reason)


def is_hidden(name: str) -> bool:
    """Hidden entries (``.git``, ``.DS_Store``, ``._x.json``) are passed over without a report line."""
    return name.startswith(".")


def visible_entries(folder: Path, ctx: Context) -> list[os.DirEntry] | None:
    """The folder's non-hidden entries, sorted by name (so walks and reports are deterministic); None when it
    cannot be read, which is a bad unit like an unreadable file (strict: DataError; lenient: recorded)."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not is_hidden(e.name)), key=lambda e: e.name)
    except OSError as exc:
        ctx.fail(folder, f"cannot read folder ({exc.strerror or exc})")
        return None


def find_files(path: Path, suffix: str, what: str, ctx: Context) -> list[Path]:
    """`path` itself when it is a file, else every ``*suffix`` file under it (recursively, in relative-path
    order). Every other visible entry under it goes to ``ctx.report.ignored`` with the reason."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    first_ignored = len(ctx.report.ignored)
    files: list[Path] = []
    _walk(path, suffix, files, ctx, visited={os.path.realpath(path)})
    if not files:
        raise DataError(f"{path}: no {what} files found" + ignored_summary(ctx.report, first_ignored))
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


def _walk(folder: Path, suffix: str, files: list[Path], ctx: Context, visited: set[str]) -> None:
    entries = visible_entries(folder, ctx)
    if entries == []:
        ctx.ignore(folder, "empty folder")
    for e in entries or []:
        if e.is_dir():
            real = os.path.realpath(e.path)
            if real in visited:  # a link back up the tree would make the walk endless
                ctx.ignore(e.path, f"link to a folder already walked ({real})")
                continue
            visited.add(real)
            _walk(Path(e.path), suffix, files, ctx, visited)
        elif not e.is_file():
            ctx.ignore(e.path, "not a regular file or folder (a broken link?)")
        elif e.name.endswith(suffix):
            files.append(Path(e.path))
        else:
            ctx.ignore(e.path, f"not a {suffix} file")


def ignored_summary(report: LoadReport, start: int = 0, shown: int = 3) -> str:
    """``"; ignored: a (reason), b (reason), ... (N in all)"`` for the entries ignored since `start`, so that a
    "nothing found" error says what was there instead; "" when nothing was ignored."""
    entries = report.ignored[start:]
    if not entries:
        return ""
    text = ", ".join(f"{path} ({reason})" for path, reason in entries[:shown])
    return f"; ignored: {text}" + (f", ... ({len(entries)} in all)" if len(entries) > shown else "")


def load_files(files: Sequence[Path], desc: str, load_one, ctx: Context) -> list[PoseSequence]:
    """Every file through `load_one(file)` (a sequence, a list of them, or None for a lenient skip), with a
    progress bar; counts the loaded sequences in the report."""
    out = []
    for f in progress(files, desc):
        loaded = load_one(f)
        out.extend(loaded if isinstance(loaded, list) else [] if loaded is None else [loaded])
    ctx.report.loaded += len(out)
    return out


def progress(items: Sequence, desc: str, unit: str = "file") -> Iterable:
    """tqdm progress bar for long walks; silent when stderr is not a terminal (``disable=None``)."""
    if _tqdm is None or len(items) < 2:
        return items
    return _tqdm(items, desc=desc, unit=unit, disable=None, leave=False)


def read_text(path: Path) -> str:
    """A file's text, or DataError for unreadable / non-UTF-8 content (a BOM is ignored)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None


def parse_floats(fields: Sequence[str], what: str) -> np.ndarray:
    """Parse text fields as numbers into float32; ValueError with a readable reason when one is not
    a number or is not finite in float32 (NaN, inf, or out of range)."""
    values = []
    for k, field in enumerate(fields):
        text = field.strip()
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"non-numeric value {text[:30]!r} at {what} {k}") from None
        if not math.isfinite(v) or abs(v) > 3.0e38:
            raise ValueError(f"non-finite or out-of-range value {text[:30]!r} at {what} {k}")
        values.append(v)
    return np.asarray(values, dtype=np.float32)


def _frame_list(frames: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(f)) for f in frames[:limit])
    return shown + (f", ... ({len(frames)} in all)" if len(frames) > limit else "")


def build_sequence(ctx: Context, poses, frame_times, *, where: str, **fields) -> PoseSequence | None:
    """Check a parsed sequence and wrap it in a PoseSequence, or report it and return None.

    `where` names the file (and the sequence inside it, for multi-sequence files) in messages.
    Applies the rules in this module's docstring: finite values, confidence clipped to [0, 1],
    all-zero-confidence frames (strict: error, lenient: dropped and recorded), no empty sequence.
    """
    poses = np.asarray(poses, dtype=np.float32)
    frame_times = np.asarray(frame_times, dtype=np.int64)
    if poses.ndim != 3 or poses.shape[2] < 3 or poses.shape[1] < 1:
        ctx.fail(where, f"poses must be (frames, joints, x/y[/z]/confidence), got shape {poses.shape}")
        return None
    if len(frame_times) != len(poses):
        ctx.fail(where, f"{len(frame_times)} frame times for {len(poses)} frames")
        return None
    if len(poses) == 0:
        ctx.fail(where, "empty sequence (no usable frame)")
        return None
    bad = ~np.isfinite(poses).all(axis=(1, 2))
    if bad.any():
        ctx.fail(where, f"non-finite coordinates (NaN/inf) in frame(s) {_frame_list(frame_times[bad])}")
        return None
    poses[..., -1] = np.clip(poses[..., -1], 0.0, 1.0)
    empty = ~(poses[..., -1] > 0).any(axis=1)
    if empty.any():
        ctx.fail(where, f"all joints have zero confidence in frame(s) {_frame_list(frame_times[empty])}"
                        + ("; frames dropped" if ctx.lenient else ""))
        poses, frame_times = poses[~empty], frame_times[~empty]
        if len(poses) == 0:
            ctx.fail(where, "empty sequence (no usable frame)")
            return None
    return PoseSequence(poses=poses, frame_times=frame_times, source=str(fields.pop("source", where)), **fields)


MAX_FRAME = 2**62


def frame_number(text: str) -> int:
    """A frame number written in ASCII digits; ValueError if it is not one or is absurdly large."""
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"frame number {text[:30]!r} is not a non-negative integer")
    value = int(text)
    if value > MAX_FRAME:
        raise ValueError(f"frame number {text[:30]!r} is too large")
    return value

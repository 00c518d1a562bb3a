"""Checkpoints that survive a kill at any moment.

A save never touches the checkpoint it replaces until the new one is complete and pointed to:

1. write the weights (`model.safetensors`) and the trainer state (`state.pt`: optimizer, scheduler, epoch, RNG)
   into a staging folder `.<name>.<step>.<random>/`, fsync each file;
2. rename the staging folder to a name never used before, `<name>.<step>.<random>/`, fsync the directory;
3. atomically replace the pointer file `<name>.latest` (write a temporary file, fsync, rename, fsync);
4. only then remove the older folders of `<name>`.

A kill before step 3 leaves the pointer on the previous complete checkpoint (or none), after it on the new one;
the pointer never names a missing or partial folder. Staging folders and unreferenced folders left by killed
saves are removed by `remove_stale` at start-up. A pointer that names a missing folder (a tampered or damaged
run directory) is an error, never a silent fallback to other weights.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

POINTER_SUFFIX = ".latest"


def _fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entry to disk (directories: so a rename survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


def save_checkpoint(directory: Path, name: str, model: torch.nn.Module, state: dict, step: int) -> Path:
    """Save `model`'s weights and `state` as the new latest checkpoint of `name` (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=f".{name}.{step}."))
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, staging / "model.safetensors")
    torch.save(state, staging / "state.pt")
    for file in ("model.safetensors", "state.pt"):
        _fsync_path(staging / file)
    final = directory / staging.name[1:]  # the random part makes it a name no earlier save used
    os.rename(staging, final)
    _fsync_path(directory)
    atomic_write_text(directory / f"{name}{POINTER_SUFFIX}", final.name)
    for old in _folders_of(directory, name):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _folders_of(directory: Path, name: str) -> list[Path]:
    """The (non-staging) checkpoint folders of `name`: `<name>.<step>.<random>`."""
    return [p for p in directory.glob(f"{name}.*") if p.is_dir() and p.name.count(".") - name.count(".") == 2]


def remove_stale(directory: Path) -> list[Path]:
    """Remove what killed saves left behind: staging folders, temporary pointer files and checkpoint folders no
    pointer names. Call it on one process only, before any save of this run. Returns the removed paths."""
    if not directory.is_dir():
        return []
    pointed = {(directory / p.read_text().strip()).resolve() for p in directory.glob(f"*{POINTER_SUFFIX}")
               if p.is_file()}
    removed = []
    for path in sorted(directory.iterdir()):
        staging = path.name.startswith(".")
        orphan = path.is_dir() and not staging and path.resolve() not in pointed
        if staging or orphan:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def latest_checkpoint(directory: Path, name: str) -> Path | None:
    """The folder `<name>.latest` points to; None when there is no pointer. A pointer to a missing or partial
    folder raises ValueError naming it: the run directory is damaged and other weights must not stand in."""
    pointer = directory / f"{name}{POINTER_SUFFIX}"
    if not pointer.is_file():
        return None
    folder = directory / pointer.read_text().strip()
    missing = [f for f in ("model.safetensors", "state.pt") if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"checkpoint pointer {pointer} names {folder}, which lacks {', '.join(missing)}: the run "
                         f"directory is damaged; restore that folder or remove the pointer to start {name} again")
    return folder


def load_checkpoint(folder: Path, model: torch.nn.Module, strict: bool = True) -> dict:
    """Load weights into model; returns the trainer state. Corrupt files raise ValueError naming the file."""
    load_weights(folder, model, strict=strict)
    return read_state(folder)


def read_state(folder: Path) -> dict:
    """The trainer state of a checkpoint (tensors and plain containers only: no code runs on load)."""
    try:
        return torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read trainer state {folder / 'state.pt'}: {error}") from error


def load_weights(folder: Path, model: torch.nn.Module, strict: bool = True) -> None:
    """Load a checkpoint's weights into `model`; a checkpoint that does not fit the model raises ValueError."""
    try:
        weights = load_file(folder / "model.safetensors")
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {folder / 'model.safetensors'}: {error}") from error
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(f"checkpoint {folder} does not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")

"""Checkpoints that survive a kill.

Each save writes a complete folder `<name>.<step>/` (weights in `model.safetensors`, optimizer / scheduler /
epoch / RNG in `state.pt`) under a temporary name, renames it into place, then atomically rewrites the pointer
file `<name>.latest`. A kill at any moment leaves the pointer on the previous complete checkpoint or the new one,
never on a torn pair; older folders are removed only after the pointer moved.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(directory: Path, name: str, model: torch.nn.Module, state: dict, step: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=f".{name}.{step}."))
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, staging / "model.safetensors")
    torch.save(state, staging / "state.pt")
    final = directory / f"{name}.{step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    atomic_write_text(directory / f"{name}.latest", final.name)
    for old in directory.glob(f"{name}.*"):
        if old.is_dir() and old != final and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: Path, name: str) -> Path | None:
    pointer = directory / f"{name}.latest"
    if not pointer.is_file():
        return None
    folder = directory / pointer.read_text().strip()
    return folder if (folder / "model.safetensors").is_file() and (folder / "state.pt").is_file() else None


def load_checkpoint(folder: Path, model: torch.nn.Module, strict: bool = True) -> dict:
    """Load weights into model; returns the trainer state. Corrupt files raise ValueError naming the file."""
    try:
        weights = load_file(folder / "model.safetensors")
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {folder / 'model.safetensors'}: {error}") from error
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(f"checkpoint {folder} does not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    try:
        return torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read trainer state {folder / 'state.pt'}: {error}") from error


def load_weights(folder: Path, model: torch.nn.Module) -> None:
    """Weights only, non-strict: a later stage starts from an earlier stage's pieces."""
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=False)

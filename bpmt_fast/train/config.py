"""Typed training configuration: dataclasses with commented defaults; YAML presets override them.

A preset is a short diff of these defaults. Unknown keys are errors that name the key's full path, so a typo
never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bpmt_fast.model.common import ModelConfig


@dataclass
class DataConfig:
    source: str = "synthetic"  # synthetic | gait3d:PATH | alphapose:PATH | casiab:PATH | npz:PATH
    protocol: str = "subject-disjoint"  # subject-disjoint | closed-set | camera | cross-condition
    synthetic: dict = field(default_factory=dict)  # overrides of SyntheticGaitConfig (synthetic source only)
    skeleton: str = "coco17"
    max_frames: int = 90  # longer sequences are cropped (random crop in training, centre crop in evaluation)
    test_subjects: float = 0.3  # subject-disjoint protocols: fraction (or count if >= 1) of subjects held out
    val_subjects: float = 0.15  # ... (of all candidate subjects, like test_subjects) for early stopping
    lenient: bool = False  # skip (and report) corrupt files instead of failing
    seed: int = 0


@dataclass
class AugmentConfig:
    mirror: float = 0.5  # probability of a left/right mirror
    crop_min_fraction: float = 0.7  # temporal crop keeps at least this fraction of frames
    speed: tuple[float, float] = (0.8, 1.25)  # speed-change factor range
    joint_noise: float = 0.01  # std of Gaussian noise on normalised coordinates
    part_mask: float = 0.1  # probability to drop one whole part


@dataclass
class PretrainConfig:
    """Stage 1 (per-part) or stage 2 (part-pair) masked reconstruction."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    mask_ratio: float = 0.4  # fraction of valid frames replaced by the mask token, per part
    freeze_parts: bool = True  # stage 2 only: keep the stage-1 encoders fixed while the pair blocks learn


@dataclass
class FinetuneConfig:
    epochs: int = 30
    identities_per_batch: int = 8  # P of a P x K batch (triplet / supervised contrastive need K >= 2)
    sequences_per_identity: int = 4  # K
    batches_per_epoch: int = 0  # 0: about one pass over the training sequences
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    triplet_weight: float = 1.0
    triplet_margin: float = 0.2
    supcon_weight: float = 0.0
    supcon_temperature: float = 0.1
    ce_weight: float = 1.0  # 0 disables the classifier
    label_smoothing: float = 0.1
    patience: int = 8  # early stopping: epochs without validation mAP (closed set: accuracy) improvement
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    models: list[str] = field(default_factory=lambda: ["bpmt", "baseline"])  # trained one after the other
    stages: list[str] = field(default_factory=lambda: ["1", "2", "ft"])
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    stage1: PretrainConfig = field(default_factory=PretrainConfig)
    stage2: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    run_dir: str = "runs/latest"
    checkpoint_every: int = 1  # epochs between checkpoints (a killed run resumes from the last one)


def from_dict(cls, values: dict, path: str = ""):
    """Build dataclass `cls` from a (possibly partial) dict; unknown keys raise ValueError naming them."""
    if not isinstance(values, dict):
        raise ValueError(f"config {path or 'root'} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f" in {path}" if path else ""
        raise ValueError(f"unknown config key(s){where}: {', '.join(unknown)}; valid: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _convert(hints[name], value, f"{path}.{name}" if path else name)
    return cls(**kwargs)


def _convert(hint, value, path: str):
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"config {path} must be a list, got {value!r}")
        return [_convert(typing.get_args(hint)[0], v, path) for v in value]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config {path} must be a list, got {value!r}")
        return tuple(_convert(a, v, path) for a, v in zip(typing.get_args(hint), value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and not isinstance(value, str):
        return str(value)
    if hint in (int, float, bool) and not isinstance(value, hint):
        raise ValueError(f"config {path} must be {hint.__name__}, got {value!r}")
    return value


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults <- YAML preset (optional `base:` preset it extends) <- overrides (e.g. from the CLI)."""
    values: dict = {}
    if path is not None:
        values = _read_yaml(Path(path))
    return from_dict(TrainConfig, merge(values, overrides or {}))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    values = yaml.safe_load(path.read_text()) or {}
    base = values.pop("base", None)
    return merge(_read_yaml(path.parent / base), values) if base else values


def to_dict(config) -> dict:
    return dataclasses.asdict(config)

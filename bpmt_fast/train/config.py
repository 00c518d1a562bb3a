"""Typed training configuration: dataclasses with commented defaults; YAML presets override them.

A preset is a short diff of these defaults (it may extend other presets with ``base: other.yaml`` or
``base: [a.yaml, b.yaml]``, merged in order); command-line
``key=value`` overrides go on top. Every value is checked when it is read, and every problem is a ``ValueError``
whose message starts with ``config <full.key.path>``:

* unknown keys (with the valid ones listed), so a typo never silently falls back to a default;
* types, without coercion: a string where a number belongs is an error, not ``str()``-ed or parsed; ``true`` is
  not an integer; a float field takes an integer (``5`` -> ``5.0``); non-finite numbers are refused;
* tuples have exactly their length (``augment.speed: [0.8, 1.2, 5.0]`` is an error, not truncated);
* closed choices are ``typing.Literal`` (protocol, device, model and stage names, skeleton formats from
  ``bpmt_fast.model.skeleton.FORMATS``, evaluation protocols and metric);
* ranges are declared on the fields (``bounded(default, "[0, 1)")``: the value, or each item of a list / tuple,
  must lie in the interval);
* cross-field rules of a section (``_RULES``), e.g. ``warmup_epochs <= epochs``, ``model.dim`` divisible by
  ``model.heads``, ``augment.speed`` ordered, ``data.skeleton == model.skeleton``.

No silently ignored setting: ``load_config`` also refuses a key that was *explicitly set* (anywhere in the YAML
chain or the overrides, defaults aside) but that the resulting config does not use (``unused_settings``):

* protocol parameters: subject-disjoint uses ``data.test_subjects`` / ``data.val_subjects``; closed-set
  ``data.closed_set.*``; camera ``data.camera.*``, plus ``data.test_subjects`` / ``data.val_subjects`` only with
  ``data.camera.open_set: true``; cross-condition ``data.test_subjects``, ``data.val_subjects`` and
  ``data.cross_condition.*``; partition ``data.val_subjects`` and ``data.partition.*`` (the file's TEST_SET is the
  test subjects, so not ``data.test_subjects``), but not ``data.partition.gallery_types`` / ``probe_types`` when
  ``data.partition.probe_list_key`` is set (the probes are then that list of the file);
* ``data.synthetic.*`` unless ``data.source`` is synthetic; ``data.lenient`` when it is (the generator has no bad
  files to skip);
* ``model.num_classes`` (the pipeline sets it from the training subjects);
* ``stage1.freeze_parts`` (only stage 2 freezes the part encoders);
* ``finetune.label_smoothing`` with ``ce_weight: 0``, ``finetune.triplet_margin`` with ``triplet_weight: 0``,
  ``finetune.supcon_temperature`` with ``supcon_weight: 0``.

Deliberately not covered: ``stage1.*`` / ``stage2.*`` when ``stages`` or ``models`` leave that stage out (e.g.
``models: [baseline]``, which has no stage 2). ``models`` and ``stages`` choose what runs now out of a preset that
describes every stage, as ``bpmt-fast train --stages`` does; refusing the preset's other stage settings would make
every such selection edit the preset.

Reading configs:

* ``load_config(path, overrides)``: defaults <- preset chain <- overrides (a dict, or ``key=value`` strings), all
  of the checks above.
* ``load_resolved_config(path)``: a run's saved ``config.yaml`` (``to_dict`` output, every key present). Types,
  ranges and cross-field rules are checked, the unused-key check is skipped: a resolved config holds every key by
  construction, so "explicitly set" means nothing there.
* ``from_dict(cls, values)``: one dataclass from a mapping, with every check but the unused-key one (which needs
  the whole config); ``validate(config)`` re-checks a config built or changed in code.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from bpmt_fast.attention import BackendError, check_backend_name
from bpmt_fast.data.loaders import SCHEMES
from bpmt_fast.data.synthetic import SyntheticGaitConfig
from bpmt_fast.data.transforms import NORMALISATION_MODES
from bpmt_fast.model.common import ModelConfig
from bpmt_fast.model.skeleton import FORMATS

Protocol = Literal["subject-disjoint", "closed-set", "camera", "cross-condition", "partition"]
Device = Literal["auto", "cpu", "cuda"]
ModelName = Literal["bpmt", "baseline"]
StageName = Literal["1", "2", "ft"]  # quote them in YAML: [1, 2, ft] reads as two integers and a string
EvalProtocol = Literal["reid", "gait3d", "cross-view"]
Metric = Literal["euclidean", "cosine"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Normalisation = Literal[NORMALISATION_MODES]
CompileMode = Literal["off", "default", "reduce-overhead"]
SkeletonName = Literal[tuple(FORMATS)]  # the registry's names, so a new format needs no edit here


def bounded(default, interval: str):
    """A field whose value (each item, for a list or tuple) must lie in `interval`, e.g. "[0, 1)" or "(0, inf)"."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"range": interval})
    return field(default=default, metadata={"range": interval})


@dataclass
class ClosedSetConfig:
    """data.closed_set: every subject trains; each subject's recordings are divided train / val / test."""

    val_fraction: float = bounded(0.1, "[0, 1)")  # of each subject's recordings, for early stopping
    test_fraction: float = bounded(0.2, "[0, 1)")  # of each subject's recordings, scored at the end


@dataclass
class CameraConfig:
    """data.camera: subjects seen by at least `min_cameras` cameras (PoseSequence.view), split by camera."""

    min_cameras: int = bounded(3, "[2, inf)")  # subjects seen by fewer cameras are dropped
    probe_cameras: int = bounded(1, "[1, inf)")  # per subject: cameras held out (test / probe side)
    val_cameras: int = bounded(0, "[0, inf)")  # closed set only: per subject, cameras held out for validation
    # true: retrieval on unseen subjects (data.test_subjects / data.val_subjects; what the original BPMT work
    # reported); false: closed set, every kept subject trains and is tested on its held-out cameras
    open_set: bool = False


@dataclass
class CrossConditionConfig:
    """data.cross_condition: on test subjects the gallery is `gallery_conditions`, each probe condition a set."""

    gallery_conditions: list[str] = field(default_factory=lambda: ["nm"])
    probe_conditions: list[str] = field(default_factory=lambda: ["bg", "cl", "ph", "txt", "wsf", "wss"])


@dataclass
class PartitionConfig:
    """data.partition: a published train / test partition (OpenGait's datasets/<DATASET>/<DATASET>.json) and the
    field's gallery / probe rule for it (bpmt_fast.data.splits.partition_split)."""

    # the JSON file {"TRAIN_SET": [subject ids], "TEST_SET": [subject ids]}; a relative path is read from the
    # working directory (where bpmt-fast runs), not from the preset's folder
    file: str = ""
    # test subjects' sequences of these types (OpenGait type folders, e.g. nm-01) form the gallery
    gallery_types: list[str] = field(default_factory=list)
    # probe-set name -> its types, e.g. {NM: [nm-05, nm-06], BG: [bg-01, bg-02], CL: [cl-01, cl-02]}; a mapping of
    # names to lists of strings (checked by the section's rules)
    probe_types: dict = field(default_factory=dict)
    # a list of probe sequences in the file (Gait3D: PROBE_SET, entries label-type-view); when set, the gallery is
    # every other test sequence and gallery_types / probe_types are not read
    probe_list_key: str | None = None


@dataclass
class DataConfig:
    source: str = "synthetic"  # synthetic | SCHEME:PATH (a loader of bpmt_fast.data.loaders.SCHEMES)
    protocol: Protocol = "subject-disjoint"  # which keys each one reads: see the module docstring
    # overrides of SyntheticGaitConfig (synthetic source only); checked against its fields
    synthetic: dict = field(default_factory=dict, metadata={"schema": SyntheticGaitConfig})
    skeleton: SkeletonName = "coco17"  # must match model.skeleton
    max_frames: int = bounded(90, "[1, inf)")  # longer sequences are cropped (random in training, centred in eval)
    # subject-disjoint, cross-condition and open-set camera protocols: fraction (below 1) or count (a whole number
    # >= 1) of the candidate subjects held out for testing
    test_subjects: float = bounded(0.3, "(0, inf)")
    # ... and for validation (early stopping; partition: drawn from the TRAIN_SET subjects); 0: none
    val_subjects: float = bounded(0.15, "[0, inf)")
    closed_set: ClosedSetConfig = field(default_factory=ClosedSetConfig)  # closed-set protocol
    camera: CameraConfig = field(default_factory=CameraConfig)  # camera protocol
    cross_condition: CrossConditionConfig = field(default_factory=CrossConditionConfig)  # cross-condition protocol
    partition: PartitionConfig = field(default_factory=PartitionConfig)  # partition protocol
    lenient: bool = False  # file sources: skip (and report) corrupt files instead of failing
    # hips: centre on the hips, scale to unit torso; body: also one rotation per sequence that makes the spine
    # vertical and a rescale to a fixed body height (GPGait's human-oriented transformation; see normalise)
    normalisation: Normalisation = "hips"
    # extra unlabelled pose sources for the self-supervised stages 1 and 2 ("synthetic" or SCHEME:PATH, same
    # skeleton and channels as data.source); sequences of the split's validation / test side never reach them
    pretrain_sources: list[str] = field(default_factory=list)
    seed: int = bounded(0, "[0, inf)")  # split and synthetic data


@dataclass
class AugmentConfig:
    """Training augmentations (bpmt_fast.data.transforms), applied in this order after normalisation."""

    crop_min_fraction: float = bounded(0.7, "(0, 1]")  # temporal crop keeps at least this fraction of frames
    speed: tuple[float, float] = bounded((0.8, 1.25), "(0, inf)")  # speed-change factor range (low <= high)
    reverse: float = bounded(0.0, "[0, 1]")  # probability of playing the walk backwards
    mirror: float = bounded(0.5, "[0, 1]")  # probability of a left/right mirror
    move: float = bounded(0.0, "[0, 1]")  # probability of a small smooth random move (rotation, scale, shift)
    point_noise: float = bounded(0.01, "[0, inf)")  # std of Gaussian noise per joint and frame (normalised units)
    joint_noise: float = bounded(0.0, "[0, inf)")  # std of one Gaussian offset per joint for the whole walk
    part_mask: float = bounded(0.1, "[0, 1]")  # probability to drop one whole part


@dataclass
class PretrainConfig:
    """Stage 1 (per-part) or stage 2 (part-pair) masked reconstruction."""

    epochs: int = bounded(10, "[1, inf)")
    batch_size: int = bounded(32, "[1, inf)")
    lr: float = bounded(1e-3, "(0, inf)")
    weight_decay: float = bounded(0.05, "[0, inf)")
    warmup_epochs: int = bounded(1, "[0, inf)")  # at most epochs
    mask_ratio: float = bounded(0.4, "(0, 1)")  # fraction of valid frames replaced by the mask token, per part
    freeze_parts: bool = True  # stage 2 only: keep the stage-1 encoders fixed while the pair blocks learn
    # stage 2 only (BPMT): weight of the CLIP-style InfoNCE between the two directions of each part pair, beside
    # reconstruction (0: off)
    contrastive_weight: float = bounded(0.0, "[0, inf)")
    contrastive_temperature: float = bounded(0.1, "(0, inf)")


@dataclass
class FinetuneConfig:
    epochs: int = bounded(30, "[1, inf)")
    identities_per_batch: int = bounded(8, "[1, inf)")  # P of a P x K batch (metric losses need P, K >= 2)
    sequences_per_identity: int = bounded(4, "[1, inf)")  # K
    batches_per_epoch: int = bounded(0, "[0, inf)")  # 0: about one pass over the training sequences
    lr: float = bounded(5e-4, "(0, inf)")
    weight_decay: float = bounded(0.05, "[0, inf)")
    warmup_epochs: int = bounded(2, "[0, inf)")  # at most epochs
    triplet_weight: float = bounded(1.0, "[0, inf)")  # at least one of the three loss weights must be > 0
    triplet_margin: float = bounded(0.2, "[0, inf)")
    supcon_weight: float = bounded(0.0, "[0, inf)")
    supcon_temperature: float = bounded(0.1, "(0, inf)")
    ce_weight: float = bounded(1.0, "[0, inf)")  # 0 disables the classifier
    label_smoothing: float = bounded(0.1, "[0, 1)")
    patience: int = bounded(8, "[1, inf)")  # early stopping: epochs without gain of the headline validation score
    grad_clip: float = bounded(1.0, "[0, inf)")  # 0: no clipping


@dataclass
class EvaluationConfig:
    # reid: gallery items of the probe's own subject in the probe's own camera excluded; gait3d: nothing excluded;
    # cross-view: CASIA-B style, per view pair. The first is the headline, and what early stopping watches.
    protocols: list[EvalProtocol] = field(default_factory=lambda: ["reid", "cross-view"])
    ranks: list[int] = bounded([1, 5, 10], "[1, inf)")  # rank-k accuracies reported
    metric: Metric = "euclidean"  # distance between embeddings
    # false: the centre data.max_frames of each sequence; true: all its frames (up to max_frames, centre crop
    # beyond), in consecutive chunks of at most chunk_frames whose embeddings / logits are averaged by length
    all_frames: bool = False
    max_frames: int = bounded(1000, "[1, inf)")
    chunk_frames: int = bounded(0, "[0, inf)")  # 0: data.max_frames, the length the model trained on
    flip: bool = False  # test-time augmentation: average with the left/right-mirrored sequence


@dataclass
class RuntimeConfig:
    """How the training step runs (not what it computes): precision, compilation, shapes, data loading."""

    # auto: bf16 autocast on CUDA GPUs that support it, fp32 elsewhere; fp16 adds a gradient scaler. Weights,
    # optimizer state and losses stay fp32; evaluation embeddings are fp32.
    precision: Precision = "auto"
    compile: CompileMode = "off"  # torch.compile of the training model: off | default | reduce-overhead
    # Batches are padded up to the smallest of these frame counts that holds their longest sequence (static shapes
    # for compiled graphs); [] pads to the longest sequence of each batch. Values above data.max_frames are unused.
    frame_buckets: list[int] = bounded([], "[1, inf)")
    workers: int = bounded(0, "[0, inf)")  # data-loader worker processes for training batches (0: main process)
    log_every: int = bounded(20, "[1, inf)")  # steps between progress-bar loss reads (each read waits for the GPU)


@dataclass
class TrainConfig:
    models: list[ModelName] = field(default_factory=lambda: ["bpmt", "baseline"])  # trained one after the other
    stages: list[StageName] = field(default_factory=lambda: ["1", "2", "ft"])
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    stage1: PretrainConfig = field(default_factory=PretrainConfig)
    stage2: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    train: RuntimeConfig = field(default_factory=RuntimeConfig)
    seed: int = bounded(0, "[0, inf)")
    device: Device = "auto"
    run_dir: str = "runs/latest"
    checkpoint_every: int = bounded(1, "[0, inf)")  # epochs between checkpoints (0: none; resume needs them)


# --------------------------------------------------------------------------------------------- cross-field rules
# Each yields (key relative to the section, problem); from_dict raises on the first one.


def _subject_count_problems(key: str, value: float):
    if value >= 1 and not value.is_integer():
        yield key, f"{value} must be a whole number (a count of subjects) or a fraction below 1"


def _duplicates(key: str, values: list):
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        yield key, f"lists {', '.join(repeated)} more than once"


def _not_empty(key: str, values: list):
    if not values:
        yield key, "must not be empty"


def _source_problems(key: str, source: str):
    scheme, sep, path = source.partition(":")
    if source != "synthetic" and not (sep and scheme.strip().lower() in SCHEMES and path.strip()):
        yield key, f"expected 'synthetic' or SCHEME:PATH with SCHEME one of {', '.join(SCHEMES)}, got {source!r}"


def _data_rules(c: DataConfig):
    yield from _source_problems("source", c.source)
    for i, source in enumerate(c.pretrain_sources):
        yield from _source_problems(f"pretrain_sources[{i}]", source)
    yield from _duplicates("pretrain_sources", c.pretrain_sources)
    yield from _subject_count_problems("test_subjects", c.test_subjects)
    yield from _subject_count_problems("val_subjects", c.val_subjects)
    if c.protocol == "partition" and not c.partition.file.strip():
        yield "partition.file", ("required by protocol 'partition': the published partition, an OpenGait dataset "
                                 "JSON such as datasets/CASIA-B/CASIA-B.json")


def _closed_set_rules(c: ClosedSetConfig):
    if c.val_fraction + c.test_fraction >= 1:
        yield "test_fraction", (f"val_fraction + test_fraction = {c.val_fraction + c.test_fraction:g} leaves no "
                                f"training data (must be below 1)")


def _camera_rules(c: CameraConfig):
    if c.probe_cameras + c.val_cameras > c.min_cameras - 1:
        yield "probe_cameras", (f"probe_cameras + val_cameras = {c.probe_cameras + c.val_cameras} must be at most "
                                f"min_cameras - 1 = {c.min_cameras - 1} (one camera stays on the training side)")
    if c.open_set and c.val_cameras:
        yield "val_cameras", "must be 0 with open_set: true (the open set validates on data.val_subjects)"


def _cross_condition_rules(c: CrossConditionConfig):
    for key in ("gallery_conditions", "probe_conditions"):
        yield from _not_empty(key, getattr(c, key))
        yield from _duplicates(key, getattr(c, key))
    both = sorted(set(c.gallery_conditions) & set(c.probe_conditions))
    if both:
        yield "probe_conditions", f"{', '.join(both)} also in gallery_conditions"


def _partition_rules(c: PartitionConfig):
    yield from _duplicates("gallery_types", c.gallery_types)
    owner = {t: "gallery_types" for t in c.gallery_types}
    for name, types in c.probe_types.items():
        key = f"probe_types.{name}"
        if not isinstance(name, str) or not name.strip():
            yield "probe_types", f"probe-set names must be non-empty strings, got {_shown(name)}"
            return
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            yield key, f"expected a list of types (strings), got {_shown(types)}"
            return
        yield from _not_empty(key, types)
        yield from _duplicates(key, types)
        for type_ in types:
            if type_ in owner:
                yield key, f"{type_} also in {owner[type_]}"
            owner[type_] = f"probe_types.{name}"
    if c.probe_list_key is not None and not c.probe_list_key.strip():
        yield "probe_list_key", "must not be empty (leave it out, or null, to divide by gallery / probe types)"


def _augment_rules(c: AugmentConfig):
    low, high = c.speed
    if low > high:
        yield "speed", f"expected (low, high) with low <= high, got ({low:g}, {high:g})"


def _warmup_rule(c):
    if c.warmup_epochs > c.epochs:
        yield "warmup_epochs", f"{c.warmup_epochs} is more than epochs ({c.epochs})"


def _finetune_rules(c: FinetuneConfig):
    yield from _warmup_rule(c)
    if not (c.triplet_weight or c.supcon_weight or c.ce_weight):
        yield "ce_weight", "triplet_weight, supcon_weight and ce_weight are all 0: nothing to learn from"
    if c.triplet_weight or c.supcon_weight:  # positives need K >= 2, negatives P >= 2
        for key in ("identities_per_batch", "sequences_per_identity"):
            if getattr(c, key) < 2:
                yield key, f"must be >= 2 for the triplet / supervised contrastive losses, got {getattr(c, key)}"


def _model_rules(c: ModelConfig):
    yield from _not_empty("streams", c.streams)
    yield from _duplicates("streams", c.streams)
    if c.dim % c.heads:
        yield "dim", f"{c.dim} is not divisible by heads ({c.heads})"
    if c.attn_backend is not None:
        try:
            check_backend_name(c.attn_backend)
        except BackendError as error:
            yield "attn_backend", str(error)


def _evaluation_rules(c: EvaluationConfig):
    for key in ("protocols", "ranks"):
        yield from _not_empty(key, getattr(c, key))
        yield from _duplicates(key, getattr(c, key))


def _runtime_rules(c: RuntimeConfig):
    yield from _duplicates("frame_buckets", c.frame_buckets)
    if c.frame_buckets != sorted(c.frame_buckets):
        yield "frame_buckets", f"must be ascending, got {c.frame_buckets}"


def _train_rules(c: TrainConfig):
    for key in ("models", "stages"):
        yield from _not_empty(key, getattr(c, key))
        yield from _duplicates(key, getattr(c, key))
    if c.model.skeleton != c.data.skeleton:
        yield "model.skeleton", f"{c.model.skeleton!r} differs from data.skeleton {c.data.skeleton!r}"
    if not c.run_dir.strip():
        yield "run_dir", "must not be empty"


_RULES = {DataConfig: _data_rules, ClosedSetConfig: _closed_set_rules, CameraConfig: _camera_rules,
          CrossConditionConfig: _cross_condition_rules, PartitionConfig: _partition_rules,
          AugmentConfig: _augment_rules, PretrainConfig: _warmup_rule,
          FinetuneConfig: _finetune_rules, ModelConfig: _model_rules, EvaluationConfig: _evaluation_rules,
          RuntimeConfig: _runtime_rules, TrainConfig: _train_rules}


# ---------------------------------------------------------------------------------------- reading and checking


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _error(path: str, problem: str) -> ValueError:
    return ValueError(f"config {path or '(root)'}: {problem}")


def _shown(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def from_dict(cls, values: dict, path: str = ""):
    """Build dataclass `cls` from a (possibly partial) mapping; every problem is a ValueError naming its key.

    Checks types, Literal choices, tuple lengths, field ranges and the section's cross-field rules, not unused
    keys (see `load_config`), so it also reads a resolved config (`to_dict` output)."""
    if not isinstance(values, dict):
        raise _error(path, f"expected a mapping, got {_shown(values)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in values:
        if name not in fields:
            close = difflib.get_close_matches(str(name), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _error(_join(path, name), f"unknown config key {name!r}{hint}; valid keys here: "
                                            f"{', '.join(fields)}")
    kwargs = {name: _field_value(fields[name], hints[name], value, _join(path, name))
              for name, value in values.items()}
    try:
        config = cls(**kwargs)
    except ValueError as error:  # a dataclass's own __post_init__ check (SyntheticGaitConfig)
        raise _error(path, str(error)) from None
    for key, problem in _RULES.get(cls, lambda _: ())(config):
        raise _error(_join(path, key), problem)
    return config


def _field_value(f: dataclasses.Field, hint, value, path: str):
    schema = f.metadata.get("schema")
    if schema is not None:  # a free-form dict of another dataclass's fields: check them, keep the dict
        checked = from_dict(schema, value, path)
        value = {name: getattr(checked, name) for name in value}
    else:
        value = _convert(hint, value, path)
    if "range" in f.metadata:
        _check_range(value, f.metadata["range"], path)
    return value


def _convert(hint, value, path: str):
    """`value` as type `hint`, without coercion (an int for a float aside); ValueError naming `path` otherwise."""
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, path)
    if origin is Literal:
        # type-exact: the stage "1" is not the integer 1, and True is not 1
        if not any(value == a and type(value) is type(a) for a in args):
            quote = f" (quote it: '{value}')" if str(value) in args else ""
            raise _error(path, f"expected one of {', '.join(repr(a) for a in args)}, got {_shown(value)}{quote}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _error(path, f"expected a list, got {_shown(value)}")
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        return _convert_tuple(args, value, path)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _error(path, f"expected a mapping, got {_shown(value)}")
        if not args:
            return dict(value)
        return {_convert(args[0], k, f"{path}.{k}"): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    return _convert_scalar(hint, value, path)


def _convert_tuple(args: tuple, value, path: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise _error(path, f"expected a list, got {_shown(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise _error(path, f"expected {len(args)} values, got {len(value)} ({list(value)})")
    return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


def _convert_scalar(hint, value, path: str):
    if hint is bool:
        if not isinstance(value, bool):
            raise _error(path, f"expected true or false, got {_shown(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _error(path, f"expected an integer, got {_shown(value)}{_unquote_hint(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _error(path, f"expected a number, got {_shown(value)}{_unquote_hint(value)}")
        if not math.isfinite(value):
            raise _error(path, f"expected a finite number, got {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _error(path, f"expected a string, got {_shown(value)}")
        return value
    raise TypeError(f"config {path}: unsupported field type {hint!r}")  # a programming error, not bad input


def _unquote_hint(value) -> str:
    """For a number written in quotes: the strict check does not parse strings, say so."""
    try:
        float(value) if isinstance(value, str) else None
    except ValueError:
        return ""
    return " (a number in quotes is a string)" if isinstance(value, str) else ""


@functools.lru_cache(maxsize=None)
def _interval(text: str) -> tuple[bool, float, float, bool]:
    """"[0, 1)" -> (closed low, 0.0, 1.0, closed high)."""
    match = re.fullmatch(r"([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])", text)
    if not match:
        raise TypeError(f"bad interval {text!r}")
    return match[1] == "[", float(match[2]), float(match[3]), match[4] == "]"


def _check_range(value, interval: str, path: str) -> None:
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_range(item, interval, f"{path}[{i}]")
        return
    closed_low, low, high, closed_high = _interval(interval)
    above = value >= low if closed_low else value > low
    below = value <= high if closed_high else value < high
    if above and below:
        return
    if math.isinf(high):
        wanted = f"{'>=' if closed_low else '>'} {low:g}"
    else:
        wanted = f"in {interval}"
    raise _error(path, f"must be {wanted}, got {value:g}")


def validate(config: TrainConfig) -> TrainConfig:
    """Check a config built or changed in code (e.g. with dataclasses.replace) by the rules of a loaded one."""
    return from_dict(TrainConfig, to_dict(config))


# ------------------------------------------------------------------------------------------- unused settings


def unused_settings(config: TrainConfig) -> dict[str, str]:
    """Key or section -> why `config` does not read it; setting one explicitly is an error (see `load_config`)."""
    unused = _unused_protocol_keys(config.data)
    data, finetune = config.data, config.finetune
    if data.source != "synthetic":
        unused["data.synthetic"] = f"is only read with data.source 'synthetic' (it is {data.source!r})"
    else:
        unused["data.lenient"] = "only applies to file sources (data.source is 'synthetic')"
    unused["model.num_classes"] = ("is set by the pipeline (the number of training subjects when finetune.ce_weight "
                                   "> 0, else 0)")
    unused["stage1.freeze_parts"] = "only applies to stage 2 (stage 1 trains the part encoders)"
    for key in ("contrastive_weight", "contrastive_temperature"):
        unused[f"stage1.{key}"] = "only applies to stage 2 (the objective pairs the two directions of a part pair)"
    if not config.stage2.contrastive_weight:
        unused["stage2.contrastive_temperature"] = "is not used with stage2.contrastive_weight 0"
    if not config.evaluation.all_frames:
        for key in ("max_frames", "chunk_frames"):
            unused[f"evaluation.{key}"] = "is only read with evaluation.all_frames: true"
    if not has_validation(data):
        unused["finetune.patience"] = ("is not used: the split has no validation side, so early stopping is off "
                                       "(give the protocol validation subjects / cameras / sequences)")
    for key, weight in (("label_smoothing", "ce_weight"), ("triplet_margin", "triplet_weight"),
                        ("supcon_temperature", "supcon_weight")):
        if not getattr(finetune, weight):
            unused[f"finetune.{key}"] = f"is not used with finetune.{weight} 0"
    return unused


def has_validation(data: DataConfig) -> bool:
    """Whether the protocol's split has a validation side (what early stopping watches)."""
    if data.protocol == "closed-set":
        return data.closed_set.val_fraction > 0
    if data.protocol == "camera" and not data.camera.open_set:
        return data.camera.val_cameras > 0
    return data.val_subjects > 0


PROTOCOL_KEYS = ("data.test_subjects", "data.val_subjects", "data.closed_set", "data.camera", "data.cross_condition",
                 "data.partition")
_SECTIONS = ("data.closed_set", "data.camera", "data.cross_condition", "data.partition")  # listed as `key.*`


def protocol_keys(data: DataConfig) -> tuple[str, ...]:
    """The protocol parameters (of PROTOCOL_KEYS) that `data.protocol` reads."""
    subjects = ("data.test_subjects", "data.val_subjects")
    if data.protocol == "closed-set":
        return ("data.closed_set",)
    if data.protocol == "camera":
        return ("data.camera",) + (subjects if data.camera.open_set else ())
    if data.protocol == "cross-condition":
        return subjects + ("data.cross_condition",)
    if data.protocol == "partition":
        return ("data.val_subjects", "data.partition")
    return subjects


def _unused_protocol_keys(data: DataConfig) -> dict[str, str]:
    used = protocol_keys(data)
    listed = ", ".join(f"{key}.*" if key in _SECTIONS else key for key in used)
    why = f"is not used by protocol {data.protocol!r} (it uses {listed})"
    unused = {key: why for key in PROTOCOL_KEYS if key not in used}
    if data.protocol == "camera" and not data.camera.open_set:
        for key in ("data.test_subjects", "data.val_subjects"):
            unused[key] = why[:-1] + "; data.camera.open_set: true uses it, for retrieval on unseen subjects)"
    if data.protocol == "partition":
        unused["data.test_subjects"] = why[:-1] + "; the test subjects are data.partition.file's TEST_SET)"
        if data.partition.probe_list_key is not None:
            for key in ("gallery_types", "probe_types"):
                unused[f"data.partition.{key}"] = (f"is not read with data.partition.probe_list_key set (the probes "
                                                   f"are the file's {data.partition.probe_list_key!r} list, the "
                                                   f"gallery every other test sequence)")
    return unused


def leaves(values: dict, path: str = "") -> dict:
    """Dotted path -> value of each leaf of a config mapping (an empty mapping is no leaf): what a preset chain
    or override set, or what a saved config.yaml holds."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(leaves(value, _join(path, key)))
        else:
            out[_join(path, key)] = value
    return out


def within(key: str, prefix: str) -> bool:
    """Whether dotted `key` is `prefix` or lies under it ("data.camera.views" within "data.camera")."""
    return key == prefix or key.startswith(prefix + ".")


def check_unused(config: TrainConfig, values: dict) -> None:
    """ValueError for the first key set in `values` (the raw mapping `config` came from) that `config` ignores."""
    unused = unused_settings(config)
    for key in leaves(values):
        for prefix, why in unused.items():
            if within(key, prefix):
                raise ValueError(f"config {key} {why}")


# ------------------------------------------------------------------------------------ files and overrides


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader, except that 1e-3 is a float: PyYAML follows YAML 1.1, whose floats need a dot, and
    would hand the strict number check a string."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$"),
                              list("-+0123456789."))


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def parse_override(text: str) -> dict:
    """"finetune.lr=1e-3" -> {"finetune": {"lr": 0.001}}; the value is YAML ("[bpmt]" is a list, "" is null)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key):
        raise ValueError(f"expected key=value with a dotted key (e.g. finetune.lr=1e-3), got {text!r}")
    try:
        parsed = parse_yaml(value)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{key}: the value {value!r} is not valid YAML ({problem})") from None
    return nest(key, parsed)


def nest(key: str, value) -> dict:
    """"a.b", v -> {"a": {"b": v}}."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def parse_overrides(texts: list[str]) -> dict:
    """Several key=value overrides, later ones winning, as one nested mapping."""
    out: dict = {}
    for text in texts:
        out = merge(out, parse_override(text))
    return out


def merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None = None, overrides: dict | list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML preset (and the `base:` presets it extends) <- overrides: a mapping, or key=value strings
    (CLI). Every check of the module docstring, the unused-key one included."""
    values = _read_yaml(Path(path)) if path is not None else {}
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(list(overrides))
    values = merge(values, overrides or {})
    config = from_dict(TrainConfig, values)
    check_unused(config, values)
    return config


def load_resolved_config(path: str | Path) -> TrainConfig:
    """A run's saved config.yaml (every key, as `to_dict` writes it): checked like any config except for unused
    keys, which a resolved config holds by construction."""
    return from_dict(TrainConfig, _read_yaml(Path(path)))


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ValueError(f"config file {path}: its base: chain comes back to it")
    values = parse_yaml(path.read_text())
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path}: expected a mapping of keys, got {type(values).__name__}")
    base = values.pop("base", None)
    if base is None:
        return values
    bases = base if isinstance(base, list) else [base]  # several: merged in order, later ones winning
    if not bases or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"config file {path}: base must be a file name or a list of them, got {_shown(base)}")
    merged: dict = {}
    for name in bases:
        merged = merge(merged, _read_yaml(path.parent / name, seen + (path.resolve(),)))
    return merge(merged, values)


def to_dict(config) -> dict:
    """Every key of `config`, YAML-ready (tuples as lists): what a run saves as its resolved config.yaml."""
    return _plain(dataclasses.asdict(config))


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value

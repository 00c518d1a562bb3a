"""Use a trained run: its kept weights with its recorded preprocessing, walks in, identity embeddings out.

    import bpmt_fast
    run = bpmt_fast.load_run("runs/quick")                       # BPMT's kept best weights, eval mode
    features = run.embed(poses, lengths)                         # (N, E) float32
    gallery = run.embed_dataset("opengait:data/CASIA-B-Pose")    # Embeddings: features + subject / view / ...

What `embed` does to a walk is what the run's evaluation did (one code path: `PoseDataset` and
`bpmt_fast.eval.inference.infer_batch`): joints converted to the run's skeleton by name (`data.skeleton`),
normalised as `data.normalisation` says, the centre `data.max_frames` window (or up to `evaluation.max_frames`
frames in chunks with `evaluation.all_frames`), averaged with the mirrored walk when `evaluation.flip` is on
(or as the `flip` argument says). The features are the BN-neck output the run's retrieval compares, under the
run's `evaluation.metric` (euclidean by default, as OpenGait evaluates); `l2_normalise=True` gives unit vectors
(euclidean ranking then equals cosine ranking).

Checkpoints are plain files: `checkpoints/<model>-best.*/model.safetensors` (safetensors) and `state.pt`
(tensors and containers only: `torch.load(..., weights_only=True)` reads it).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bpmt_fast.data.sequence import PoseSequence

EMBEDDINGS_FORMAT = "bpmt-fast embeddings 1"
RUN_SIDES = ("all", "train", "val", "test", "gallery", "probe")  # `run:SIDE` data specs
_LABELS = ("subject", "view", "condition", "sequence_id", "source")


@dataclass
class Embeddings:
    """Embedded sequences: `features` `(N, E)` float32 and, per sequence, its labels (strings, "" when unknown).

    `info` says where the features come from (run directory, model, checkpoint, metric, flip, normalisation):
    features of different checkpoints are not comparable, and `identify` refuses to mix them."""

    features: np.ndarray
    subject: list[str]
    view: list[str]
    condition: list[str]
    sequence_id: list[str]
    source: list[str]
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.features = np.asarray(self.features, dtype=np.float32)
        if self.features.ndim != 2:
            raise ValueError(f"embeddings must be (N, E), got shape {self.features.shape}")
        for name in _LABELS:
            values = [str(v) for v in getattr(self, name)]
            if len(values) != len(self.features):
                raise ValueError(f"embeddings: {len(values)} {name} labels for {len(self.features)} features")
            setattr(self, name, values)

    def __len__(self) -> int:
        return len(self.features)

    def save(self, path: str | os.PathLike) -> Path:
        """An `.npz` of plain arrays (features, one unicode array per label, `info` as JSON): `np.load` reads it
        with `allow_pickle=False`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = {name: np.asarray(getattr(self, name), dtype=str) for name in _LABELS}
        with open(path, "wb") as handle:  # a file object: numpy appends no ".npz" to a name without one
            np.savez(handle, format=np.asarray(EMBEDDINGS_FORMAT), features=self.features,
                     info=np.asarray(json.dumps(self.info)), **labels)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Embeddings":
        """Read a file written by `save` (`bpmt-fast embed`); anything else is an error naming the file."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as arrays:
                data = {key: arrays[key] for key in arrays.files}
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not an embeddings file written by `bpmt-fast embed` ({error})") from None
        if str(data.get("format", "")) != EMBEDDINGS_FORMAT:
            raise ValueError(f"{path}: not an embeddings file written by `bpmt-fast embed` (format "
                             f"{str(data.get('format', 'missing'))!r}, expected {EMBEDDINGS_FORMAT!r})")
        missing = [key for key in ("features", "info", *_LABELS) if key not in data]
        if missing:
            raise ValueError(f"{path}: embeddings file lacks {', '.join(missing)}")
        return cls(data["features"], *(data[name].tolist() for name in _LABELS), info=json.loads(str(data["info"])))

    def labelled(self) -> bool:
        """Whether every sequence has a subject label (then retrieval metrics can be computed)."""
        return len(self) > 0 and all(self.subject)


@dataclass
class TrainedRun:
    """A finetuned model of a run directory, in eval mode, with the config that trained it (see the module
    docstring). Build it with `load_run`."""

    run_dir: Path
    model_name: str
    model: torch.nn.Module
    config: object  # bpmt_fast.train.config.TrainConfig
    weights: Path  # the checkpoint folder the weights come from
    epoch: int  # the finetune epoch those weights were kept at
    device: torch.device
    _data: object = field(default=None, repr=False)

    @property
    def skeleton(self):
        return self.model.skeleton

    @property
    def metric(self) -> str:
        return self.config.evaluation.metric

    def info(self, flip: bool, l2_normalise: bool) -> dict:
        return {"run_dir": str(self.run_dir), "model": self.model_name, "weights": self.weights.name,
                "epoch": self.epoch, "metric": "euclidean" if l2_normalise else self.metric, "flip": flip,
                "l2_normalised": l2_normalise, "skeleton": self.skeleton.name,
                "embedding_dim": self.config.model.embedding_dim}

    # ---- embedding -----------------------------------------------------------------------------
    def embed(self, poses, lengths=None, *, flip: bool | None = None, l2_normalise: bool = False,
              skeleton: str | None = None, batch_size: int = 64) -> np.ndarray:
        """`(N, E)` float32 features of N walks.

        `poses`: a padded `(N, T, J, C)` array or tensor with `lengths` `(N,)` (frames per walk; all T when
        omitted), a list of `(T_i, J, C)` arrays, or a list of `PoseSequence` (then labels are ignored; see
        `embed_sequences`). Raw pixel coordinates with confidence as the last channel, as the loaders give them.
        `skeleton`: the joint format of array input (default: the run's); converted to the run's by name."""
        return self.embed_sequences(_as_sequences(poses, lengths, skeleton or self.skeleton.name), flip=flip,
                                    l2_normalise=l2_normalise, batch_size=batch_size).features

    def embed_sequences(self, sequences: Sequence[PoseSequence], *, flip: bool | None = None,
                        l2_normalise: bool = False, batch_size: int = 64) -> Embeddings:
        """Embeddings of loaded sequences, with their labels; `flip` defaults to the run's `evaluation.flip`."""
        from bpmt_fast.data.convert import convert_sequences
        from bpmt_fast.data.dataset import PoseDataset
        from bpmt_fast.eval.inference import evaluation_frames, infer_batch
        from bpmt_fast.train.data import eval_loader

        sequences = list(sequences)
        if not sequences:
            raise ValueError("nothing to embed: no sequences")
        flip = self.config.evaluation.flip if flip is None else bool(flip)
        data = self.config.data
        max_frames, chunk_frames = evaluation_frames(self.config.evaluation, data.max_frames)
        dataset = PoseDataset(convert_sequences(sequences, self.skeleton.name), self.skeleton, max_frames=max_frames,
                              random_crop=False, normalisation=data.normalisation)
        features = []
        for batch in eval_loader(dataset, batch_size):
            out = infer_batch(self.model, batch["poses"], batch["lengths"], self.device, chunk_frames=chunk_frames,
                              flip=flip)
            features.append(out["embeddings"].numpy())
        features = np.concatenate(features)  # (N, E)
        if l2_normalise:
            features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        return Embeddings(features, *([getattr(s, name, "") for s in sequences] for name in _LABELS),
                          info=self.info(flip, l2_normalise))

    def embed_dataset(self, spec: str, *, lenient: bool = False, **options) -> Embeddings:
        """Embeddings of a dataset: `SCHEME:PATH` (any loader, see `bpmt_fast.data.loaders`) or `run:SIDE`, the
        run's own data on one side of its saved split (SIDE: all, train, val, test (the test sequences: the
        closed-set test list, or the test gallery and probes), or gallery / probe: the two sets its test retrieval
        compared). `options`: see `embed_sequences`."""
        sequences, report = self.load(spec, lenient=lenient)
        embeddings = self.embed_sequences(sequences, **options)
        embeddings.info.update(data=spec, load_report={"loaded": report.loaded, "skipped": report.skipped,
                                                       "ignored": report.ignored})
        return embeddings

    # ---- data --------------------------------------------------------------------------------------
    def sequences(self, spec: str, *, lenient: bool = False) -> list[PoseSequence]:
        """The sequences of a data spec (see `embed_dataset`)."""
        return self.load(spec, lenient=lenient)[0]

    def load(self, spec: str, *, lenient: bool = False):
        """The sequences of a data spec and the load report (what was skipped or ignored, and why)."""
        from bpmt_fast.data.loaders import load_dataset
        from bpmt_fast.data.sequence import LoadReport

        scheme, _, side = str(spec).partition(":")
        if scheme != "run":
            return load_dataset(spec, lenient=lenient)
        if side not in RUN_SIDES:
            raise ValueError(f"data spec {spec!r}: expected run:SIDE with SIDE one of {', '.join(RUN_SIDES)}")
        data = self.run_data()
        if side == "all":
            return list(data.sequences), LoadReport(loaded=len(data.sequences))
        if side in ("gallery", "probe"):
            from bpmt_fast.train.pipeline import retrieval_test_lists

            indices = retrieval_test_lists(data)[side == "probe"]
        elif side == "test":  # closed-set protocols have a test list, retrieval ones a test gallery and probes
            indices = data.split.test or data.split.gallery + data.split.probe
        else:
            indices = getattr(data.split, side)
        if not indices:
            raise ValueError(f"data spec {spec!r}: the run's {data.split.protocol} split has no {side} sequences")
        return [data.sequences[i] for i in indices], LoadReport(loaded=len(indices))

    def run_data(self):
        """The run's data, split as its `split.json` records (checked: data that no longer gives it is refused)."""
        if self._data is None:
            from bpmt_fast.train.pipeline import prepare_data

            self._data = prepare_data(self.config, self.run_dir, say=lambda *args: None, pretraining=False)
        return self._data


def _as_sequences(poses, lengths, skeleton: str) -> list[PoseSequence]:
    """Array input of `TrainedRun.embed` as unlabelled PoseSequence records."""
    if isinstance(poses, (list, tuple)) and poses and all(isinstance(p, PoseSequence) for p in poses):
        if lengths is not None:
            raise ValueError("embed: lengths apply to a padded array, not to PoseSequence input")
        return list(poses)
    if isinstance(poses, (list, tuple)):
        if lengths is not None:
            raise ValueError("embed: lengths apply to a padded (N, T, J, C) array, not to a list of walks")
        walks = [np.asarray(p.detach().cpu() if isinstance(p, torch.Tensor) else p, dtype=np.float32) for p in poses]
    else:
        array = np.asarray(poses.detach().cpu() if isinstance(poses, torch.Tensor) else poses, dtype=np.float32)
        if array.ndim != 4:
            raise ValueError(f"embed: poses must be a padded (N, T, J, C) array or a list of (T, J, C) walks, got "
                             f"shape {array.shape}")
        if lengths is None:
            lengths = [array.shape[1]] * len(array)
        lengths = np.asarray(lengths.detach().cpu() if isinstance(lengths, torch.Tensor) else lengths)
        if lengths.shape != (len(array),) or lengths.dtype.kind not in "iu":
            raise ValueError(f"embed: lengths must be ({len(array)},) integers, got {lengths.dtype} {lengths.shape}")
        if ((lengths < 1) | (lengths > array.shape[1])).any():
            raise ValueError(f"embed: lengths must lie in [1, {array.shape[1]}] (the padded frames), got "
                             f"{lengths.tolist()}")
        walks = [array[i, :n] for i, n in enumerate(lengths.tolist())]
    if not walks:
        raise ValueError("nothing to embed: no walks")
    from bpmt_fast.model.skeleton import get_format

    joints = get_format(skeleton).num_joints
    for i, walk in enumerate(walks):
        if walk.ndim != 3 or len(walk) < 1:
            raise ValueError(f"embed: walk {i} must be (T >= 1, J, C), got shape {walk.shape}")
        if walk.shape[1] != joints:
            raise ValueError(f"embed: walk {i} has {walk.shape[1]} joints, skeleton {skeleton!r} has {joints}: pass "
                             f"skeleton= naming the walks' joint format (coco17, openpose18, openpose25, halpe26)")
    return [PoseSequence(poses=walk, subject="", view="", skeleton=skeleton, sequence_id=str(i))
            for i, walk in enumerate(walks)]


def load_run(run_dir: str | os.PathLike, model: str | None = None, *, device: str | torch.device | None = None,
             attn_backend: str | None = None) -> TrainedRun:
    """A run directory's finetuned `model` ("bpmt" or "baseline"; default: bpmt when the run trained it, else
    its first model) with the weights the run reports (its kept best epoch), in eval mode on `device` (default:
    CUDA when available, else CPU). `attn_backend` replaces the run's `model.attn_backend` (e.g. a run trained
    with triton kernels, used on a CPU)."""
    from dataclasses import replace

    from bpmt_fast.train import checkpoint
    from bpmt_fast.train.pipeline import finetuned_checkpoint, load_run_config
    from bpmt_fast.train.stages import build_model

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    name = model or ("bpmt" if "bpmt" in config.models else config.models[0])
    if name not in config.models:
        raise ValueError(f"{run_dir} trained {', '.join(config.models)}, not {name!r}")
    folder = finetuned_checkpoint(run_dir, name)
    model_config = config.model if attn_backend is None else replace(config.model, attn_backend=attn_backend)
    network = build_model(name, model_config, _classes(folder))
    checkpoint.load_weights(folder, network)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    network.to(device).eval()
    return TrainedRun(run_dir, name, network, replace(config, model=model_config), folder,
                      int(checkpoint.read_state(folder).get("epoch", 0)), device)


def _classes(folder: Path) -> int:
    """The classifier's class count in a checkpoint (0 without a classifier), read from the tensor header."""
    from safetensors import safe_open

    try:
        with safe_open(folder / "model.safetensors", "pt") as weights:
            if "head.classifier.weight" not in weights.keys():
                return 0
            return weights.get_slice("head.classifier.weight").get_shape()[0]
    except Exception:  # noqa: BLE001  a damaged file: load_weights names it with the reason
        return 0

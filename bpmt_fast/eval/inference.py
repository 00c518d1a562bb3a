"""Evaluation-time inference: every frame of a sequence (in chunks the model can take) and flip test-time
augmentation, averaged into one embedding (and classifier logits) per sequence.

* Chunks: a sequence of L frames is cut into ceil(L / chunk_frames) consecutive chunks of near-equal length
  (numpy.array_split's rule); their outputs are averaged, each weighted by its frame count. chunk_frames = None
  embeds each sequence whole.
* Flip: the sequence is also embedded mirrored (x -> -x about the hip centre of normalised poses, left and right
  joints swapped, exactly bpmt_fast.data.transforms.Mirror), and the two outputs are averaged, so the result is
  the same for a walk and its mirror image.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from bpmt_fast.model.skeleton import SkeletonFormat


def evaluation_frames(evaluation, crop_frames: int) -> tuple[int, int | None]:
    """(frames evaluated per sequence, chunk length) as a run's config records them: with
    `evaluation.all_frames`, up to `evaluation.max_frames` frames in chunks of `evaluation.chunk_frames` (0: the
    training crop `crop_frames`); otherwise the centre `crop_frames` window, whole."""
    if evaluation is not None and evaluation.all_frames:
        return evaluation.max_frames, evaluation.chunk_frames or crop_frames
    return crop_frames, None


def mirror_poses(poses: torch.Tensor, skeleton: SkeletonFormat) -> torch.Tensor:
    """`(B, T, J, C)` normalised poses mirrored: x negated where the joint is present, left/right joints swapped."""
    present = poses[..., -1:] > 0
    flipped = torch.cat([torch.where(present, -poses[..., :1], poses[..., :1]), poses[..., 1:]], dim=-1)
    return flipped[:, :, list(skeleton.left_right)]


def chunk_spans(length: int, chunk_frames: int | None) -> list[tuple[int, int]]:
    """(start, stop) of the consecutive chunks a `length`-frame sequence is cut into (see the module docstring)."""
    if chunk_frames is None or length <= chunk_frames:
        return [(0, length)]
    bounds = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(length), -(-length // chunk_frames))])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


@torch.no_grad()
def infer_batch(model, poses: torch.Tensor, lengths: torch.Tensor, device, chunk_frames: int | None = None,
                flip: bool = False, max_batch: int = 64) -> dict:
    """One padded batch -> per sequence `embeddings` `(B, E)` (the BN-necked retrieval features) and `logits`
    `(B, K)` or None, averaged over chunks (weighted by frames) and over the flip when asked."""
    model.eval()
    pieces, owner, weight = [], [], []
    for b, length in enumerate(lengths.tolist()):
        for start, stop in chunk_spans(length, chunk_frames):
            pieces.append(poses[b, start:stop])
            owner.append(b)
            weight.append(stop - start)
    views = [False, True] if flip else [False]
    embeddings, logits = 0.0, 0.0
    weights = torch.tensor(weight, dtype=torch.float32)[:, None]  # (N, 1)
    owners = torch.tensor(owner)
    totals = torch.zeros(len(lengths), 1).index_add_(0, owners, weights)  # (B, 1)
    for mirrored in views:
        outputs = {"embeddings": [], "logits": []}
        for first in range(0, len(pieces), max_batch):
            group = pieces[first:first + max_batch]
            chunk = pad_sequence(group, batch_first=True)  # (N, T, J, C), zeros after each chunk's end
            chunk_lengths = torch.tensor([len(piece) for piece in group])
            if mirrored:
                chunk = mirror_poses(chunk, model.skeleton)
            out = model(chunk.to(device), chunk_lengths.to(device), stage="finetune")
            outputs["embeddings"].append(out["inference_feat"]["embeddings"].float().cpu())
            if out["training_feat"]["logits"] is not None:
                outputs["logits"].append(out["training_feat"]["logits"].float().cpu())
        per_chunk = torch.cat(outputs["embeddings"])  # (N, E)
        embeddings = embeddings + torch.zeros(len(lengths), per_chunk.shape[1]).index_add_(
            0, owners, per_chunk * weights) / totals
        if outputs["logits"]:
            per_chunk = torch.cat(outputs["logits"])  # (N, K)
            logits = logits + torch.zeros(len(lengths), per_chunk.shape[1]).index_add_(
                0, owners, per_chunk * weights) / totals
    return {"embeddings": embeddings / len(views),
            "logits": logits / len(views) if isinstance(logits, torch.Tensor) else None}

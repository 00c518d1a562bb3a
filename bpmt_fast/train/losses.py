"""Training losses: masked-frame reconstruction (stages 1 and 2) and identity losses (finetune)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _unflatten(recon: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """pred/target `(B, G, T, Jmax*C)` -> `(B, G, T, Jmax, C)`."""
    max_joints = recon["joint_valid"].shape[-1]
    channels = recon["pred"].shape[-1] // max_joints
    return (recon["pred"].unflatten(-1, (max_joints, channels)), recon["target"].unflatten(-1, (max_joints, channels)))


def reconstruction_terms(recon: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared error and weight `(B, G, T, Jmax)`: weight 1 on masked frames of valid (non-padded) time steps at
    real joint slots whose joint is present (confidence > 0 in the target: a missing joint has nothing to
    reconstruct)."""
    pred, target = _unflatten(recon)
    present = target[..., -1] > 0  # (B, G, T, Jmax)
    frames = recon["frame_mask"] & recon["valid"][:, None, :]  # (B, G, T)
    weight = (frames[..., None] & present & recon["joint_valid"][None, :, None, :]).to(pred.dtype)
    return (pred - target).square().sum(-1), weight


def masked_reconstruction_loss(recon: dict) -> torch.Tensor:
    """Mean squared error over the masked frames only (see reconstruction_terms)."""
    error, weight = reconstruction_terms(recon)
    return (error * weight).sum() / weight.sum().clamp(min=1)


def reconstruction_error_per_group(recon: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed masked error and weight per group (part or pair) `(G,)`, for per-part / per-pair curves."""
    error, weight = reconstruction_terms(recon)
    return (error * weight).sum((0, 2, 3)), weight.sum((0, 2, 3))


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss (hardest positive, hardest negative per anchor) on Euclidean distances."""
    dist = torch.cdist(embeddings, embeddings)  # (B, B)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    hardest_positive = torch.where(same & ~eye, dist, 0.0).amax(1)
    hardest_negative = torch.where(~same, dist, float("inf")).amin(1)
    valid = (same & ~eye).any(1) & (~same).any(1)  # anchors with at least one positive and one negative
    losses = F.relu(hardest_positive - hardest_negative + margin)
    # Mean over valid anchors (0 when there is none) without boolean indexing or a branch on a tensor: both
    # would wait for the GPU every step.
    return torch.where(valid, losses, 0.0).sum() / valid.sum().clamp(min=1)


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) on L2-normalised embeddings: pull same-identity pairs together."""
    z = F.normalize(embeddings, dim=1)
    logits = z @ z.T / temperature  # (B, B)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - logits.logsumexp(1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~eye
    count = positives.sum(1)
    per_anchor = -torch.where(positives, log_prob, 0.0).sum(1) / count.clamp(min=1)
    has_positive = count > 0
    return torch.where(has_positive, per_anchor, 0.0).sum() / has_positive.sum().clamp(min=1)


def identity_loss(out: dict, labels: torch.Tensor, config) -> tuple[torch.Tensor, dict]:
    """Weighted sum of the finetune losses in `config` (FinetuneConfig), computed in fp32 whatever the autocast
    dtype of the embeddings; returns (loss, detached parts for logging, on the device)."""
    feat = {k: None if v is None else v.float() for k, v in out["training_feat"].items()}
    parts = {}
    if config.triplet_weight:
        parts["triplet"] = config.triplet_weight * batch_hard_triplet_loss(feat["embeddings"], labels,
                                                                           config.triplet_margin)
    if config.supcon_weight:
        parts["supcon"] = config.supcon_weight * supervised_contrastive_loss(feat["embeddings"], labels,
                                                                             config.supcon_temperature)
    if config.ce_weight and feat["logits"] is not None:
        parts["ce"] = config.ce_weight * F.cross_entropy(feat["logits"], labels,
                                                         label_smoothing=config.label_smoothing)
    if not parts:
        raise ValueError("finetune has no loss: set triplet_weight, supcon_weight or ce_weight above 0")
    # The parts stay on the device (detached): reading them here would wait for the GPU every step.
    return sum(parts.values()), {k: v.detach() for k, v in parts.items()}


def cross_part_contrastive_loss(pair_embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """CLIP-style InfoNCE between the two directions of every part pair.

    pair_embeddings `(B, Q, d)`: the pooled, projected stage-2 feature of each ordered pair, ordered as
    `ordered_part_pairs` yields them ((a, b) then (b, a), so Q = 2U). For each unordered pair u, the walk's (a<-b)
    feature must pick out the same walk's (b<-a) feature among the batch's walks, and the other way round
    (symmetric cross-entropy over cosine similarities / temperature, as CLIP). Mean over the U pairs."""
    batch, ordered, dim = pair_embeddings.shape
    z = F.normalize(pair_embeddings.float(), dim=-1).reshape(batch, ordered // 2, 2, dim)  # (B, U, 2, d)
    logits = torch.einsum("bud,cud->ubc", z[:, :, 0], z[:, :, 1]) / temperature  # (U, B, B): a<-b vs b<-a
    target = torch.arange(batch, device=logits.device).repeat(ordered // 2)  # (U*B,)
    forward = F.cross_entropy(logits.flatten(0, 1), target)
    backward = F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), target)
    return (forward + backward) / 2

"""BPMT: Body Part as Modality Transformer.

Three uses of one network, picked by `stage`:
- "part"     (stage 1): each part's encoder reconstructs that part's masked frames;
- "pair"     (stage 2): for each of the 10 part pairs, cross-part attention in both directions (20 ordered
                        pairs) over the stage-1 features reconstructs both parts' masked frames;
- "finetune": stage-1 features plus the stage-2 cross-part features (kept, not thrown away) are pooled over
              valid frames into an identity embedding and optional classifier. With `inter_part_layers` > 0 the
              part summaries also attend to each other (IIP-Transformer's inter-part attention: the part encoders
              are its intra-part attention) and their output joins the pooled features.
Stage "pair" also returns one projected, pooled feature per ordered pair (`pair_embeddings`) for the optional
CLIP-style contrastive objective (bpmt_fast.train.losses.cross_part_contrastive_loss).
Every part and every pair is a slice of a batch dimension: one attention call per layer covers them all.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn

from .attention_blocks import CrossPartBlock
from .common import (IdentityHead, ModelConfig, PartEncoder, attention_layout, check_pose_batch, host_length_stats,
                     model_output, reconstruction, valid_frames)
from .attention_blocks import PartTransformerBlock
from .layers import GroupedLayerNorm, GroupedLinear, masked_temporal_mean, masked_temporal_pool
from .skeleton import PART_NAMES, get_format
from .streams import parent_index
from .tokenizer import PartTokenizer

STAGES = ("part", "pair", "finetune")


def ordered_part_pairs(num_parts: int) -> list[tuple[int, int]]:
    """Both directions of every unordered pair: 10 pairs of 5 parts -> 20 (query part, key part) pairs."""
    return [ordered for a, b in itertools.combinations(range(num_parts), 2) for ordered in ((a, b), (b, a))]


class CrossPartEncoder(nn.Module):
    """Stage 2: the query part's stream attends to the key part's (fixed) stage-1 features, per ordered pair."""

    def __init__(self, pairs, config: ModelConfig):
        super().__init__()
        self.register_buffer("query_parts", torch.tensor([a for a, _ in pairs]), persistent=False)
        self.register_buffer("key_parts", torch.tensor([b for _, b in pairs]), persistent=False)
        self.blocks = nn.ModuleList(
            CrossPartBlock(pairs, config.dim, config.heads, config.mlp_ratio, config.dropout, config.attn_backend)
            for _ in range(config.pair_layers))

    def forward(self, parts: torch.Tensor, layout=None) -> torch.Tensor:
        """parts `(B, P, T, d)`, layout: PackedLayout of the B*Q pair sequences -> `(B, Q, T, d)`."""
        queries, keys = parts[:, self.query_parts], parts[:, self.key_parts]  # (B, Q, T, d) each
        for block in self.blocks:
            queries = block(queries, keys, layout)
        return queries


class InterPartEncoder(nn.Module):
    """IIP-style inter-part attention: each part's summary (its mean feature over valid frames, plus a learned part
    embedding) attends to the other parts' summaries, one sequence of P tokens per walk."""

    def __init__(self, parts: int, config: ModelConfig):
        super().__init__()
        self.part_embedding = nn.Parameter(torch.randn(parts, config.dim) * 0.02)  # (P, d)
        self.blocks = nn.ModuleList(
            PartTransformerBlock(1, config.dim, config.heads, config.mlp_ratio, config.dropout, config.attn_backend)
            for _ in range(config.inter_part_layers))
        self.norm = GroupedLayerNorm(1, config.dim)

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """features `(B, P, T, d)`, valid `(B, T)` -> `(B, P*d)`."""
        summaries = masked_temporal_mean(features, valid)  # (B, P, d)
        x = (summaries + self.part_embedding)[:, None]  # (B, 1, P, d): one group, P tokens, nothing padded
        for block in self.blocks:
            x = block(x)
        return self.norm(x).flatten(1)


class BPMT(nn.Module):
    # Modules each stage trains; the rest stay fixed (stage 2 may also train the stage-1 ones: train.stages).
    STAGE_MODULES = {"part": ("tokenizer", "part_encoder", "part_decoder"),
                     "pair": ("pair_encoder", "pair_decoder", "pair_projection"),
                     "finetune": ("tokenizer.embed", "part_encoder", "pair_encoder", "inter_part", "head")}

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        self.skeleton = get_format(config.skeleton)
        part_joints = [self.skeleton.parts[name] for name in PART_NAMES]
        self.pairs = ordered_part_pairs(len(part_joints))
        self.tokenizer = PartTokenizer(part_joints, self.skeleton.num_joints, config.in_channels, config.dim,
                                       config.streams, parent_index(self.skeleton))
        parts = self.tokenizer.num_parts
        self.part_encoder = PartEncoder(parts, config)  # stage 1
        self.part_decoder = GroupedLinear(parts, config.dim, self.tokenizer.target_dim)
        self.pair_encoder = CrossPartEncoder(self.pairs, config)  # stage 2
        self.pair_decoder = GroupedLinear(len(self.pairs), config.dim, self.tokenizer.target_dim)
        self.pair_projection = GroupedLinear(len(self.pairs), config.dim, config.dim)  # stage 2 contrastive
        self.inter_part = InterPartEncoder(parts, config) if config.inter_part_layers else None  # finetune
        inter = parts * config.dim if config.inter_part_layers else 0
        self.head = IdentityHead(parts * 2 * config.dim + inter, config)  # finetune
        # Each part is the query side of (P - 1) ordered pairs; their cross features are averaged into it.
        self.register_buffer("pairs_per_part", torch.bincount(self.pair_encoder.query_parts, minlength=parts),
                             persistent=False)

    def forward(self, poses, lengths=None, frame_mask=None, stage: str = "finetune", *, max_length: int | None = None,
                total_length: int | None = None, check_values: bool | None = None) -> dict:
        """poses `(B, T, J, C)`, lengths `(B,)`, frame_mask `(B, P, T)` bool (True = masked frame).

        `max_length` / `total_length`: `int(lengths.max())` / `int(lengths.sum())` as host ints (the collate has
        lengths on the CPU): with them a packing attention backend runs the forward without a host sync; without,
        it costs one. `check_values` (default: `not self.training`) runs the input value checks (see
        check_pose_batch).
        """
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
        check_values = not self.training if check_values is None else check_values
        lengths = check_pose_batch(poses, lengths, frame_mask, self.skeleton.num_joints, self.config.in_channels,
                                   self.tokenizer.num_parts, check_values)
        batch, frames = poses.shape[:2]
        backend = self.part_encoder.blocks[0].attn.backend
        stats = host_length_stats(backend, lengths, frames, poses.device, max_length, total_length)
        valid = valid_frames(lengths, batch, frames, poses.device)
        tokens = self.tokenizer(poses, lengths, frame_mask)  # (B, P, T, d)
        parts_layout = attention_layout(backend, lengths, batch, self.tokenizer.num_parts, frames, poses.device,
                                        stats)  # shared by every part self-attention call
        parts = self.part_encoder(tokens, parts_layout)  # (B, P, T, d)
        summary = {"lengths": valid.sum(1)}
        if stage == "part":
            target = self.tokenizer.part_features(torch.where(valid[:, :, None, None], poses, 0.0))
            recon = reconstruction(self.part_decoder(parts), target, frame_mask, valid, self.tokenizer.joint_valid)
            return model_output({"reconstruction": recon}, {}, **summary)

        pairs_layout = attention_layout(backend, lengths, batch, len(self.pairs), frames, poses.device, stats)
        cross = self.pair_encoder(parts, pairs_layout)  # (B, Q, T, d)
        if stage == "pair":  # each ordered pair (a, b) reconstructs its query part a
            target = self.tokenizer.part_features(torch.where(valid[:, :, None, None], poses, 0.0))
            query_parts = self.pair_encoder.query_parts
            mask = None if frame_mask is None else frame_mask[:, query_parts]
            recon = reconstruction(self.pair_decoder(cross), target[:, query_parts], mask, valid,
                                   self.tokenizer.joint_valid[query_parts])
            pair_pooled = masked_temporal_mean(cross, valid)  # (B, Q, d)
            projected = self.pair_projection(pair_pooled[:, :, None])[:, :, 0]  # (B, Q, d)
            return model_output({"reconstruction": recon, "pair_embeddings": projected}, {}, **summary)

        cross_per_part = torch.zeros_like(parts).index_add(1, self.pair_encoder.query_parts, cross)
        fused = parts + cross_per_part / self.pairs_per_part[None, :, None, None]  # (B, P, T, d)
        pooled = masked_temporal_pool(fused, valid).flatten(1)  # (B, P*2d)
        if self.inter_part is not None:
            pooled = torch.cat([pooled, self.inter_part(fused, valid)], dim=1)  # (B, P*2d + P*d)
        head = self.head(pooled)
        return model_output({"embeddings": head["embeddings"], "logits": head["logits"]},
                            {"embeddings": head["normed"]}, **summary)

"""The accuracy recipe (commit b6fab6b): flip test-time augmentation and chunked all-frames inference, the
pretraining set (held-out sequences never reach it), the tokenizer's input streams, a deterministic identity head,
the cross-part contrastive loss, IIP inter-part attention, the new config keys and the augmentation pipeline."""
from __future__ import annotations

import copy
import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bpmt_fast.attention import layout
from bpmt_fast.data.sequence import PoseSequence
from bpmt_fast.data.splits import subject_disjoint_split
from bpmt_fast.data.transforms import (Compose, Mirror, PartMask, PointNoise, SpeedChange, TemporalCrop,
                                       normalise)
from bpmt_fast.eval.inference import chunk_spans, infer_batch, mirror_poses
from bpmt_fast.model import BPMT, Baseline, ModelConfig
from bpmt_fast.model.common import IdentityHead
from bpmt_fast.model.layers import sinusoidal_positions
from bpmt_fast.model.skeleton import PART_NAMES, get_format
from bpmt_fast.model.streams import parent_index
from bpmt_fast.model.tokenizer import PartTokenizer
from bpmt_fast.train.config import AugmentConfig, DataConfig, load_config
from bpmt_fast.train.data import (augmentation, load_sequences, make_split, pose_fingerprint,
                                  pretraining_sequences)
from bpmt_fast.train.losses import cross_part_contrastive_loss

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
DATA = ROOT.parent / "shared" / "data"
PSYMO, GAIT3D_DEV = DATA / "psymo_alphapose", DATA / "gait3d_dev23"
COCO = get_format("coco17")
SMALL = ModelConfig(dim=16, heads=2, part_layers=1, pair_layers=1, mlp_ratio=2.0, embedding_dim=8, num_classes=3)
MODELS = {"bpmt": BPMT, "baseline": Baseline}
LENGTHS = torch.tensor([13, 5, 1, 9])


def normalised_sequence(frames: int, joints: int = 17, channels: int = 3, missing: float = 0.15) -> torch.Tensor:
    """`(T, J, C)` poses as normalise() leaves them: coordinates around the hip centre, confidence in (0.1, 1],
    missing joints (about `missing` of them) all zeros."""
    coords = torch.randn(frames, joints, channels - 1)
    conf = torch.rand(frames, joints, 1) * 0.9 + 0.1
    absent = torch.rand(frames, joints, 1) < missing
    return torch.where(absent, 0.0, torch.cat([coords, conf], dim=-1))


def normalised_batch(lengths=LENGTHS, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded `(B, T, J, C)` batch of normalised poses (zeros after each length) and its lengths."""
    poses = torch.zeros(len(lengths), int(lengths.max()), 17, channels)
    for b, length in enumerate(lengths.tolist()):
        poses[b, :length] = normalised_sequence(length, channels=channels)
    return poses, lengths.clone()


def small_model(name: str, **changes):
    return MODELS[name](dataclasses.replace(SMALL, **changes)).eval()


# ------------------------------------------------------------------------------------------------- flip TTA


@pytest.mark.parametrize("channels", [3, 4])
def test_mirror_poses_is_the_data_mirror_of_each_sequence(channels):
    poses, lengths = normalised_batch(channels=channels)
    out = mirror_poses(poses, COCO)
    mirror = Mirror(COCO)
    for b, length in enumerate(lengths.tolist()):
        expected = mirror(poses[b, :length].numpy())
        np.testing.assert_array_equal(out[b, :length].numpy(), expected)
        assert not out[b, length:].any()  # padding stays zero
    # left and right parts swap: the output's left arm is the input's right arm, x negated where present
    left, right = list(COCO.parts["left_arm"]), list(COCO.parts["right_arm"])
    source = poses[:, :, right]
    present = source[..., -1] > 0
    assert present.any() and (~present).any()
    torch.testing.assert_close(out[:, :, left, 0], torch.where(present, -source[..., 0], source[..., 0]),
                               rtol=0, atol=0)
    torch.testing.assert_close(out[:, :, left, 1:], source[..., 1:], rtol=0, atol=0)
    torch.testing.assert_close(mirror_poses(out, COCO), poses, rtol=0, atol=0)  # an involution


@pytest.mark.parametrize("name", MODELS)
def test_flip_tta_gives_the_same_output_for_a_walk_and_its_mirror(name):
    model = small_model(name)
    poses, lengths = normalised_batch()
    mirrored = mirror_poses(poses, model.skeleton)
    flip = infer_batch(model, poses, lengths, "cpu", flip=True)
    flip_mirrored = infer_batch(model, mirrored, lengths, "cpu", flip=True)
    for key in ("embeddings", "logits"):
        torch.testing.assert_close(flip[key], flip_mirrored[key], rtol=0, atol=1e-5)
    # without flip a walk and its mirror differ: the property above is not trivially true
    plain = infer_batch(model, poses, lengths, "cpu", flip=False)
    plain_mirrored = infer_batch(model, mirrored, lengths, "cpu", flip=False)
    assert (plain["embeddings"] - plain_mirrored["embeddings"]).abs().max() > 1e-3
    # and flip is the mean of the two views (not e.g. their sum, or the mirrored view alone)
    for key in ("embeddings", "logits"):
        torch.testing.assert_close(flip[key], (plain[key] + plain_mirrored[key]) / 2, rtol=1e-5, atol=1e-6)
    assert flip["embeddings"].shape == (len(lengths), SMALL.embedding_dim)
    assert flip["logits"].shape == (len(lengths), SMALL.num_classes)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("chunk_frames", [None, 4])
def test_padded_batch_equals_each_sequence_alone(name, chunk_frames):
    """Catches padding leaking into the output, or chunk outputs assigned to the wrong sequence of the batch."""
    model = small_model(name)
    poses, lengths = normalised_batch()
    batch = infer_batch(model, poses, lengths, "cpu", chunk_frames=chunk_frames, flip=True)
    for b, length in enumerate(lengths.tolist()):
        alone = infer_batch(model, poses[b:b + 1, :length], torch.tensor([length]), "cpu",
                            chunk_frames=chunk_frames, flip=True)
        for key in ("embeddings", "logits"):
            torch.testing.assert_close(batch[key][b:b + 1], alone[key], rtol=0, atol=1e-5)


def test_infer_batch_without_a_classifier_gives_no_logits():
    model = small_model("bpmt", num_classes=0)
    poses, lengths = normalised_batch()
    out = infer_batch(model, poses, lengths, "cpu", chunk_frames=4, flip=True)
    assert out["logits"] is None and out["embeddings"].shape == (len(lengths), SMALL.embedding_dim)


# ------------------------------------------------------------------------------------------- chunked frames


def test_chunk_spans_cover_the_sequence_in_near_equal_chunks():
    for length in range(1, 70):
        assert chunk_spans(length, None) == [(0, length)]
        for chunk in range(1, 25):
            spans = chunk_spans(length, chunk)
            assert spans[0][0] == 0 and spans[-1][1] == length
            assert all(stop == start for (_, stop), (start, _) in zip(spans, spans[1:]))  # consecutive
            sizes = [stop - start for start, stop in spans]
            assert min(sizes) >= 1 and max(sizes) <= chunk and max(sizes) - min(sizes) <= 1
            assert len(spans) == math.ceil(length / chunk)  # as few chunks as the cap allows
            if length <= chunk:
                assert spans == [(0, length)]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("flip", [False, True])
def test_chunked_inference_is_the_frame_weighted_mean_of_the_chunks(name, flip):
    model = small_model(name)
    poses, lengths = normalised_batch(torch.tensor([13, 5, 1, 9, 11]))
    chunk = 4
    # max_batch=3: the 11 chunks run in several model calls, whose outputs must be put back in order
    out = infer_batch(model, poses, lengths, "cpu", chunk_frames=chunk, flip=flip, max_batch=3)
    views = [poses, mirror_poses(poses, model.skeleton)] if flip else [poses]
    with torch.no_grad():
        for b, length in enumerate(lengths.tolist()):
            expected = {"embeddings": 0.0, "logits": 0.0}
            for view in views:
                for start, stop in chunk_spans(length, chunk):
                    piece = view[b:b + 1, start:stop]
                    result = model(piece, torch.tensor([stop - start]), stage="finetune")
                    weight = (stop - start) / length / len(views)
                    expected["embeddings"] = expected["embeddings"] + weight * result["inference_feat"]["embeddings"]
                    expected["logits"] = expected["logits"] + weight * result["training_feat"]["logits"]
            for key in ("embeddings", "logits"):
                torch.testing.assert_close(out[key][b:b + 1], expected[key], rtol=1e-5, atol=1e-5)
    # sanity: chunking changes the result (a long sequence is not one of its chunks)
    whole = infer_batch(model, poses, lengths, "cpu", flip=flip)
    assert (whole["embeddings"][0] - out["embeddings"][0]).abs().max() > 1e-4


# ----------------------------------------------------------------------------------------- pretraining set


def sequence(subject: str, index: int, frames: int = 12, skeleton: str = "coco17", joints: int = 17,
             channels: int = 3, prefix: str = "data") -> PoseSequence:
    poses = np.random.default_rng([sum(map(ord, prefix)), int(subject[1:]), index]).random((frames, joints, channels))
    # "nm" walks make the gallery of a held-out subject, "bg" its probe
    return PoseSequence(poses.astype(np.float32), subject, view=str(index % 3), condition="nm" if index < 2 else "bg",
                        skeleton=skeleton, sequence_id=f"{subject}/{index}", source=f"/{prefix}/{subject}/{index}.json")


def renamed(seq: PoseSequence, prefix: str) -> PoseSequence:
    """The same walk under another id, path and subject label."""
    return dataclasses.replace(seq, poses=seq.poses.copy(), subject=f"{prefix}-{seq.subject}",
                               sequence_id=f"{prefix}/{seq.sequence_id}", source=f"/{prefix}{seq.source}")


@pytest.fixture
def small_set():
    sequences = [sequence(f"s{s}", i) for s in range(6) for i in range(3)]
    split = subject_disjoint_split(sequences, test_subjects=2, val_subjects=1, seed=0)
    assert split.train and split.val and split.gallery and split.probe
    return sequences, split


def held_out(sequences, split) -> list[PoseSequence]:
    train = set(split.train)
    return [seq for i, seq in enumerate(sequences) if i not in train]


def test_pretraining_set_drops_held_out_and_duplicate_sequences(small_set):
    sequences, split = small_set
    source = "npz:/data/walks"
    train = [sequences[i] for i in split.train]
    held = held_out(sequences, split)
    fresh = [sequence(f"s{s}", i, prefix="new") for s in (7, 8) for i in range(2)]
    # data.source again, plus a sequence whose id is a held-out one but whose poses changed since the split
    changed = dataclasses.replace(held[0], poses=held[0].poses + 1.0)
    same = [copy.deepcopy(seq) for seq in sequences] + [changed]
    copies = [renamed(seq, "copy") for seq in held]  # held-out walks under other ids, paths and subjects
    # new walks, a copy of a training walk, a repeat of a new walk, and a new walk that reuses a held-out id
    reused_id = dataclasses.replace(sequence("s9", 0, prefix="other"), sequence_id=held[1].sequence_id)
    extra = fresh + [renamed(train[0], "extra"), renamed(fresh[0], "again"), reused_id]
    sources = {source: same, "gait3d:/copies": copies, "npz:/extra": extra}
    config = DataConfig(source=source, pretrain_sources=list(sources))
    loads = []

    def load(name, data_config):
        loads.append(name)
        assert data_config is config
        return sources[name], None

    result = pretraining_sequences(sequences, split, config, load=load)
    assert loads == list(sources)
    assert result.dropped == {source: {"held-out": len(held) + 1, "duplicate": len(train)},
                              "gait3d:/copies": {"held-out": len(held), "duplicate": 0},
                              "npz:/extra": {"held-out": 0, "duplicate": 2}}
    assert result.kept == {source: 0, "gait3d:/copies": 0, "npz:/extra": len(fresh) + 1}
    assert result.sequences[:len(train)] == train  # the training split first, in order
    assert result.sequences[len(train):] == fresh + [reused_id]  # an id only counts within data.source
    prints = [pose_fingerprint(seq.poses) for seq in result.sequences]
    assert len(set(prints)) == len(prints)
    assert not {pose_fingerprint(seq.poses) for seq in held} & set(prints)
    assert "dropped" in result.describe() and str(len(result.sequences)) in result.describe()


def test_pose_fingerprint_is_the_pose_array():
    seq = sequence("s1", 0)
    assert pose_fingerprint(seq.poses) == pose_fingerprint(seq.poses.astype(np.float64))
    assert pose_fingerprint(seq.poses) != pose_fingerprint(seq.poses[:-1])
    changed = seq.poses.copy()
    changed[3, 4, 0] = np.nextafter(changed[3, 4, 0], np.float32(2))
    assert pose_fingerprint(seq.poses) != pose_fingerprint(changed)
    assert pose_fingerprint(seq.poses) != pose_fingerprint(seq.poses.reshape(seq.poses.shape[0], -1))


def test_without_pretraining_sources_the_set_is_the_training_split(small_set):
    sequences, split = small_set
    result = pretraining_sequences(sequences, split, DataConfig(source="npz:/x"), load=None)
    assert result.sequences == [sequences[i] for i in split.train] and result.kept == {} == result.dropped


@pytest.mark.parametrize("other, what", [
    (dict(skeleton="openpose18", joints=18), "'openpose18'"),
    (dict(channels=4), "4 channels"),
])
def test_a_pretraining_source_of_another_skeleton_or_channel_count_is_refused(small_set, other, what):
    sequences, split = small_set
    bad = "npz:/elsewhere"
    sources = {"npz:/fine": [sequence("s8", 0, prefix="fine")], bad: [sequence("s9", 0, prefix="bad", **other)]}
    config = DataConfig(source="npz:/data", pretrain_sources=list(sources))
    with pytest.raises(ValueError, match=re.escape(repr(bad))) as error:
        pretraining_sequences(sequences, split, config, load=lambda name, _: (sources[name], None))
    assert what in str(error.value)


def test_synthetic_pretraining_source_has_other_walkers():
    """A synthetic source beside a synthetic data.source: same subject and sequence ids (another seed), so dropping
    by id would throw all of them away; nothing is dropped, and no held-out walk is inside."""
    config = load_config(CONFIGS / "quick.yaml", {"data": {"pretrain_sources": ["synthetic"]}})
    sequences, _ = load_sequences(config.data)
    split = make_split(sequences, config.data)
    result = pretraining_sequences(sequences, split, config.data)
    held = held_out(sequences, split)
    added = result.sequences[len(split.train):]
    assert {seq.sequence_id for seq in held} & {seq.sequence_id for seq in added}  # the ids do collide
    assert result.dropped == {"synthetic": {"held-out": 0, "duplicate": 0}}
    assert result.kept == {"synthetic": len(added)} and len(added) == len(sequences)
    assert not {pose_fingerprint(seq.poses) for seq in held} & {pose_fingerprint(seq.poses) for seq in added}


@pytest.mark.skipif(not (PSYMO.is_dir() and GAIT3D_DEV.is_dir()),
                    reason=f"PsyMo AlphaPose / Gait3D dev23 sample data not found at {PSYMO} / {GAIT3D_DEV}")
def test_real_data_pretraining_set_never_holds_a_test_walk(monkeypatch):
    from bpmt_fast.data.loaders import load_dataset
    from bpmt_fast.train.pipeline import prepare_data

    monkeypatch.chdir(ROOT)  # the preset's data path is relative to the project root
    psymo, gait3d = "alphapose:../shared/data/psymo_alphapose", "gait3d:../shared/data/gait3d_dev23"
    config = load_config(CONFIGS / "psymo.yaml", {"data": {"pretrain_sources": [psymo, gait3d]}})
    assert config.data.source == psymo
    data = prepare_data(config, say=lambda *_: None)
    held = held_out(data.sequences, data.split)
    assert held
    pretrain_prints = {pose_fingerprint(seq.poses) for seq in data.pretrain.sequences}
    assert not {pose_fingerprint(seq.poses) for seq in held} & pretrain_prints
    extra, _ = load_dataset(gait3d)
    assert {pose_fingerprint(seq.poses) for seq in extra} <= pretrain_prints
    train = len(data.split.train)
    assert data.pretraining.dropped[psymo] == {"held-out": len(data.sequences) - train, "duplicate": train}
    assert data.pretraining.kept[psymo] == 0 and data.pretraining.dropped[gait3d]["held-out"] == 0
    assert len(data.pretrain.sequences) == train + data.pretraining.kept[gait3d]
    assert data.pretraining.kept[gait3d] == len({pose_fingerprint(seq.poses) for seq in extra})


# ------------------------------------------------------------------------------------------ tokenizer streams

ALL_STREAMS = ("joints", "bones", "velocity", "angles")


def tokenizer(streams, channels: int = 3, dim: int = 16) -> PartTokenizer:
    parts = [COCO.parts[name] for name in PART_NAMES]
    return PartTokenizer(parts, COCO.num_joints, channels, dim, streams, parent_index(COCO))


def test_tokens_of_unmasked_frames_ignore_the_masked_joints():
    tok = tokenizer(ALL_STREAMS)
    poses, lengths = normalised_batch(torch.tensor([13, 13, 9]))
    frame_mask = torch.rand(len(lengths), tok.num_parts, poses.shape[1]) < 0.4
    # every coordinate of a joint whose part is masked at that frame is changed (confidence kept: still present)
    joint_masked = frame_mask[:, list(COCO.joint_part), :].transpose(1, 2)  # (B, T, J)
    perturbed = poses.clone()
    perturbed[..., :-1] += torch.where(joint_masked[..., None], torch.randn_like(poses[..., :-1]) * 5, 0.0)
    with torch.no_grad():
        torch.testing.assert_close(tok(perturbed, lengths, frame_mask), tok(poses, lengths, frame_mask),
                                   rtol=0, atol=0)
        # sanity: without the frame mask the same change reaches neighbouring frames' tokens (velocity, bones)
        unmasked = ~frame_mask[..., None]
        changed = (tok(perturbed, lengths) - tok(poses, lengths)).abs() * unmasked
    assert changed.max() > 1e-3


def old_tokens(tok: PartTokenizer, poses, lengths, frame_mask):
    """The tokenizer before model.streams: each part's joints of the zero-padded poses, embedded; masked frames
    the mask token; sinusoidal positions; padding zero."""
    padded = layout.zero_padding(poses, lengths)
    with_pad_slot = torch.cat([padded, padded.new_zeros(*padded.shape[:2], 1, padded.shape[3])], dim=2)
    features = with_pad_slot[:, :, tok.joint_index]  # (B, T, P, Jmax, C)
    features = features.permute(0, 2, 1, 3, 4).flatten(3)  # (B, P, T, Jmax*C)
    tokens = tok.embed(features)
    if frame_mask is not None:
        tokens = torch.where(frame_mask[..., None], tok.mask_token[None, :, None, :], tokens)
    tokens = tokens + sinusoidal_positions(poses.shape[1], tokens.shape[-1], poses.device, tokens.dtype)
    return tokens * layout.padding_mask(lengths, poses.shape[1])[:, None, :, None]


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_joints_stream_gives_the_old_tokens(channels, masked):
    tok = tokenizer(("joints",), channels)
    poses, lengths = normalised_batch(channels=channels)
    frame_mask = torch.rand(len(lengths), tok.num_parts, poses.shape[1]) < 0.4 if masked else None
    assert tok.input_dim == tok.target_dim == 9 * channels  # the torso's 9 joints
    with torch.no_grad():
        torch.testing.assert_close(tok(poses, lengths, frame_mask), old_tokens(tok, poses, lengths, frame_mask),
                                   rtol=1e-6, atol=1e-6)
    # the default model config still reads the joints alone
    for cls in (BPMT, Baseline):
        model = cls(SMALL)
        assert model.tokenizer.streams == ("joints",) and model.tokenizer.input_dim == model.tokenizer.target_dim


@pytest.mark.parametrize("channels, width", [(3, 3 + 2 + 4 + 2), (4, 4 + 3 + 6 + 3)])
def test_streams_widen_the_input_not_the_reconstruction_target(channels, width):
    tok = tokenizer(ALL_STREAMS, channels)
    assert tok.target_dim == 9 * channels and tok.input_dim == 9 * width
    assert tok.embed(torch.zeros(1, tok.num_parts, 1, tok.input_dim)).shape[-1] == 16
    model = BPMT(dataclasses.replace(SMALL, streams=list(ALL_STREAMS), in_channels=channels))
    poses, lengths = normalised_batch(channels=channels)
    frame_mask = torch.rand(len(lengths), model.tokenizer.num_parts, poses.shape[1]) < 0.4
    for stage in ("part", "pair"):
        recon = model(poses, lengths, frame_mask, stage=stage)["training_feat"]["reconstruction"]
        assert recon["pred"].shape == recon["target"].shape and recon["target"].shape[-1] == tok.target_dim


@pytest.mark.parametrize("streams", [["joints", "speed"], [], ["bones", "bones"]])
@pytest.mark.parametrize("cls", [BPMT, Baseline])
def test_bad_streams_are_refused(cls, streams):
    with pytest.raises(ValueError, match="valid names: joints, bones, velocity, angles"):
        cls(ModelConfig(streams=streams))


# ------------------------------------------------------------------------------------------- identity head


def test_identity_head_is_deterministic_in_training():
    """Dropout before the BN-neck made eval-mode embeddings differ from the trained ones (see IdentityHead)."""
    head = IdentityHead(12, dataclasses.replace(SMALL, dropout=0.5)).train()
    pooled = torch.randn(6, 12)
    first, second = head(pooled), head(pooled)
    for key in ("embeddings", "normed", "logits"):
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    torch.testing.assert_close(first["embeddings"], head.embed(pooled), rtol=0, atol=0)
    assert not any(isinstance(m, torch.nn.Dropout) for m in head.modules())


# ------------------------------------------------------------------------------------ cross-part contrastive


def reference_contrastive(pair_embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    batch, ordered, _ = pair_embeddings.shape
    target = torch.arange(batch)
    losses = []
    for u in range(ordered // 2):
        a = F.normalize(pair_embeddings[:, 2 * u].double(), dim=-1)
        b = F.normalize(pair_embeddings[:, 2 * u + 1].double(), dim=-1)
        logits = a @ b.T / temperature  # walk i's a<-b against walk j's b<-a
        losses.append((F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2)
    return torch.stack(losses).mean()


@pytest.mark.parametrize("batch, ordered, dim, temperature", [(3, 2, 5, 0.1), (5, 6, 7, 0.07), (7, 20, 3, 1.0),
                                                               (1, 4, 9, 0.5)])
def test_cross_part_contrastive_loss_matches_a_plain_restatement(batch, ordered, dim, temperature):
    pair_embeddings = torch.randn(batch, ordered, dim) * 3
    loss = cross_part_contrastive_loss(pair_embeddings, temperature)
    torch.testing.assert_close(loss.double(), reference_contrastive(pair_embeddings, temperature),
                               rtol=1e-5, atol=1e-6)


def test_cross_part_contrastive_loss_limits():
    batch, pairs = 5, 3
    walks = torch.eye(7)[:batch] * 2.5  # (B, d): orthogonal, so walks are well separated
    equal = walks[:, None].expand(batch, 2 * pairs, 7)  # both directions of every pair the same feature
    assert cross_part_contrastive_loss(equal, 0.01) < 1e-6
    constant = torch.ones(batch, 2 * pairs, 7)
    torch.testing.assert_close(cross_part_contrastive_loss(constant, 0.1), torch.tensor(math.log(batch)))
    # the model's pair order is what the loss assumes: ordered pair 2u and 2u+1 are one pair's two directions
    pairs_of_model = BPMT(SMALL).pairs
    assert len(pairs_of_model) == 20
    assert all(pairs_of_model[2 * u + 1] == pairs_of_model[2 * u][::-1] for u in range(10))


# ----------------------------------------------------------------------------------- IIP inter-part attention

IIP = dataclasses.replace(SMALL, inter_part_layers=1)


def test_bpmt_with_inter_part_attention_runs_every_stage():
    model = BPMT(IIP)
    poses, lengths = normalised_batch()
    frame_mask = torch.rand(len(lengths), model.tokenizer.num_parts, poses.shape[1]) < 0.4
    part = model(poses, lengths, frame_mask, stage="part")["training_feat"]["reconstruction"]
    pair = model(poses, lengths, frame_mask, stage="pair")["training_feat"]
    assert part["pred"].shape == part["target"].shape
    assert pair["pair_embeddings"].shape == (len(lengths), 20, IIP.dim)
    out = model(poses, lengths, stage="finetune")
    assert out["inference_feat"]["embeddings"].shape == (len(lengths), IIP.embedding_dim)
    (out["training_feat"]["embeddings"].square().mean() + out["training_feat"]["logits"].logsumexp(1).mean()
     ).backward()
    grads = [p.grad for p in model.inter_part.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_finetune_output_depends_on_the_inter_part_block():
    model = BPMT(IIP).eval()
    poses, lengths = normalised_batch()
    with torch.no_grad():
        before = model(poses, lengths)["inference_feat"]["embeddings"]
        for param in model.inter_part.blocks.parameters():
            param.add_(torch.randn_like(param) * 0.5)
        after = model(poses, lengths)["inference_feat"]["embeddings"]
    assert (before - after).abs().max() > 1e-3


def test_each_stage_trains_the_right_modules_with_inter_part_attention():
    from bpmt_fast.train.stages import step_runner

    def trained(stage: str, overrides=None) -> set[str]:
        model = BPMT(IIP)
        config = load_config(CONFIGS / "quick.yaml", overrides)
        step_runner("bpmt", model, stage, config, torch.device("cpu"))
        return {name for name, p in model.named_parameters() if p.requires_grad}

    finetune = trained("finetune")
    inter = {name for name, _ in BPMT(IIP).named_parameters() if name.startswith("inter_part.")}
    assert inter and inter <= finetune
    assert not any(name.startswith("pair_projection.") for name in finetune)
    for stage in ("part", "pair"):
        assert not inter & trained(stage)
    assert not any(name.startswith("pair_projection.") for name in trained("pair"))
    with_contrastive = trained("pair", {"stage2": {"contrastive_weight": 0.5}})
    assert any(name.startswith("pair_projection.") for name in with_contrastive)


# ------------------------------------------------------------------------------------------------- config


def test_new_config_keys_load_when_used():
    config = load_config(overrides={
        "model": {"streams": ["bones", "joints"], "inter_part_layers": 2},
        "data": {"normalisation": "body", "pretrain_sources": ["synthetic", "gait3d:some/where"]},
        "augment": {"reverse": 0.5, "move": 0.3, "joint_noise": 0.02},
        "stage2": {"contrastive_weight": 0.5, "contrastive_temperature": 0.2},
        "evaluation": {"all_frames": True, "chunk_frames": 32, "max_frames": 500, "flip": True}})
    assert config.model.streams == ["bones", "joints"] and config.data.pretrain_sources[1] == "gait3d:some/where"
    assert config.stage2.contrastive_temperature == 0.2 and config.evaluation.chunk_frames == 32
    defaults = load_config()  # today's recipe: every addition off
    assert defaults.model.streams == ["joints"] and defaults.model.inter_part_layers == 0
    assert defaults.data.normalisation == "hips" and defaults.data.pretrain_sources == []
    assert (defaults.augment.reverse, defaults.augment.move, defaults.augment.joint_noise) == (0, 0, 0)
    assert defaults.stage2.contrastive_weight == 0 and not defaults.evaluation.all_frames
    assert not defaults.evaluation.flip


# ------------------------------------------------------------------------------------------- augmentation


def walk(frames: int = 40) -> np.ndarray:
    raw = np.random.default_rng(frames).random((frames, 17, 3)).astype(np.float32)
    raw[..., :2] *= 100
    raw[np.random.default_rng(1).random((frames, 17)) < 0.1] = 0.0  # missing joints
    return normalise(raw, "coco17")


def test_default_augmentation_is_the_previous_pipeline():
    previous = Compose([TemporalCrop(0.7), SpeedChange(0.8, 1.25), Mirror(COCO, probability=0.5), PointNoise(0.01),
                        PartMask(COCO, probability=0.1)])
    current = augmentation(AugmentConfig(), "coco17")
    assert [type(t) for t in current.transforms] == [type(t) for t in previous.transforms]
    poses = walk()
    part_masked = 0
    for seed in range(40):
        old_rng, new_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        old, new = previous(poses, old_rng), current(poses, new_rng)
        np.testing.assert_array_equal(new, old)
        assert new_rng.random() == old_rng.random()  # the same number of draws
        part_masked += int((new[..., -1] == 0).all(axis=0).sum() > (poses[..., -1] == 0).all(axis=0).sum())
    assert part_masked  # the seeds reach the last step's random branch


@pytest.mark.parametrize("mirror", [0.0, 0.5])
def test_reverse_plays_the_augmented_walk_backwards(mirror):
    """ReverseTime(1.0) draws nothing, so with the same seed every other step draws the same numbers; without
    point noise (its draw is per frame, so reversal moves it) the output is exactly the reversed one."""
    poses = walk(31)
    forward = augmentation(AugmentConfig(reverse=0.0, mirror=mirror, point_noise=0.0), "coco17")
    backward = augmentation(AugmentConfig(reverse=1.0, mirror=mirror, point_noise=0.0), "coco17")
    for seed in range(20):
        rng_f, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        out_f, out_b = forward(poses, rng_f), backward(poses, rng_b)
        np.testing.assert_array_equal(out_b, out_f[::-1])
        assert rng_f.random() == rng_b.random()
    # with point noise the frames and the missing joints are still reversed; the noise is drawn in the same way
    forward = augmentation(AugmentConfig(reverse=0.0, mirror=mirror), "coco17")
    backward = augmentation(AugmentConfig(reverse=1.0, mirror=mirror), "coco17")
    for seed in range(5):
        out_f, out_b = forward(poses, np.random.default_rng(seed)), backward(poses, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_b[..., -1], out_f[::-1, :, -1])
        assert np.abs(out_b - out_f[::-1]).max() < 0.1

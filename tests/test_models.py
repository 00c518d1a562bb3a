"""BPMT and the baseline: forward/backward with every backend, padding invariance, packed == per-part calls,
torch.compile, and clear errors for bad input."""
import dataclasses

import pytest
import torch
from einops import rearrange

from bpmt_fast.attention import BACKENDS, AttentionInputs, BackendError, attention
from bpmt_fast.attention.triton import runs_interpreted
from bpmt_fast.model import BPMT, Baseline, CrossPartAttention, ModelConfig, PartSelfAttention
from bpmt_fast.testing import TEST_DEVICES

SMALL = ModelConfig(dim=32, heads=2, part_layers=1, pair_layers=1, embedding_dim=16, num_classes=5)
LENGTHS = torch.tensor([23, 7, 1, 16])
FRAMES = 23


def poses_batch(frames=FRAMES, lengths=LENGTHS, joints=17):
    poses = torch.randn(len(lengths), frames, joints, 3)
    return poses, lengths.clone()


def backend_mode(name, device="cpu"):
    """'train' if the backend runs forward+backward on `device` here, 'forward' if forward only, else skip."""
    probe = torch.zeros(1, 1, 1, 16, device=device, requires_grad=True)
    inputs = AttentionInputs.describe(probe, probe, probe, masked=True)
    cls = BACKENDS[name]
    if cls.supports(inputs):
        return "train"
    if cls.supports(dataclasses.replace(inputs, requires_grad=False)):
        return "forward"
    pytest.skip(f"{name}: " + "; ".join(cls.not_supported_reasons(inputs)))


MODELS = {"bpmt": (BPMT, ("part", "pair", "finetune")), "baseline": (Baseline, ("part", "finetune"))}


# The Triton interpreter runs every kernel program in Python (seconds per call at the default batch): there our
# Triton backends get two short sequences; the GPU runs them at the default batch.


# CPU ids stay "[bpmt-math]"; a GPU adds "[bpmt-math-cuda]". Not flex on CUDA: compiled FlexAttention compiles
# once per shape (seconds each) and every stage has its own (test_attention_backends runs flex on CUDA).
BACKEND_DEVICE = [pytest.param(name, "cpu", id=name) for name in BACKENDS] + [
    pytest.param(name, device, id=f"{name}-{device}") for device in TEST_DEVICES if device != "cpu"
    for name in BACKENDS if name != "flex"]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("backend, device", BACKEND_DEVICE)
def test_forward_backward_every_stage(model_name, backend, device):
    mode = backend_mode(backend, device)
    cls, stages = MODELS[model_name]
    model = cls(dataclasses.replace(SMALL, attn_backend=backend)).to(device)
    interpreted = runs_interpreted(BACKENDS[backend], device)
    frames, lengths = (6, torch.tensor([6, 3])) if interpreted else (FRAMES, LENGTHS)
    poses, lengths = poses_batch(frames, lengths)
    poses, lengths = poses.to(device), lengths.to(device)
    parts = model.tokenizer.num_parts
    for stage in stages:
        frame_mask = (torch.rand(len(lengths), parts, frames) < 0.4).to(device) if stage != "finetune" else None
        with torch.set_grad_enabled(mode == "train"):
            out = model(poses, lengths, frame_mask, stage=stage)
        feat = out["training_feat"]
        if stage == "finetune":
            assert out["inference_feat"]["embeddings"].shape == (len(lengths), SMALL.embedding_dim)
            assert feat["logits"].shape == (len(lengths), SMALL.num_classes)
            loss = feat["embeddings"].square().mean() + feat["logits"].logsumexp(1).mean()
        else:
            recon = feat["reconstruction"]
            assert recon["pred"].shape == recon["target"].shape
            loss = (recon["pred"] - recon["target"]).square().mean()
        assert torch.isfinite(loss)
        if mode == "train":
            model.zero_grad()
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("backend", ["math", "sdpa", "flow"])
def test_padding_does_not_change_valid_outputs(model_name, backend):
    """A sequence gives the same outputs alone as inside a padded batch, whatever the padding holds."""
    cls, stages = MODELS[model_name]
    model = cls(dataclasses.replace(SMALL, attn_backend=backend)).eval()
    poses, lengths = poses_batch()
    garbage = poses.clone()
    for i, n in enumerate(lengths):
        garbage[i, n:] = float("nan") if i % 2 else 1e4
    frame_mask = torch.rand(len(lengths), model.tokenizer.num_parts, FRAMES) < 0.4
    for stage in stages:
        mask = None if stage == "finetune" else frame_mask
        with torch.no_grad():
            batched = model(poses, lengths, mask, stage=stage)
            poisoned = model(garbage, lengths, mask, stage=stage)
            for i, n in enumerate(lengths.tolist()):
                alone = model(poses[i:i + 1, :n], None, None if mask is None else mask[i:i + 1, :, :n], stage=stage)
                for got in (batched, poisoned):
                    if stage == "finetune":
                        torch.testing.assert_close(got["inference_feat"]["embeddings"][i],
                                                   alone["inference_feat"]["embeddings"][0], atol=1e-5, rtol=1e-4)
                    else:
                        torch.testing.assert_close(got["training_feat"]["reconstruction"]["pred"][i, :, :n],
                                                   alone["training_feat"]["reconstruction"]["pred"][0],
                                                   atol=1e-5, rtol=1e-4)


def test_packed_part_attention_equals_per_part_calls():
    """One attention call over all parts equals attention run part by part with that part's weights."""
    parts, dim, heads = 5, 32, 4
    module = PartSelfAttention(parts, dim, heads, backend="sdpa")
    x = torch.randn(3, parts, 11, dim)
    lengths = torch.tensor([11, 4, 1])
    packed = module(x, lengths)
    for p in range(parts):
        qkv = x[:, p] @ module.qkv.weight[p] + module.qkv.bias[p]  # (B, N, 3d)
        q, k, v = rearrange(qkv, "b n (three h e) -> three b n h e", three=3, h=heads)
        out = attention(q, k, v, backend="math", q_lengths=lengths, kv_lengths=lengths)
        alone = rearrange(out, "b n h e -> b n (h e)") @ module.proj.weight[p] + module.proj.bias[p]
        valid = torch.arange(11)[None] < lengths[:, None]
        torch.testing.assert_close(packed[:, p][valid], alone[valid], atol=1e-5, rtol=1e-4)


def test_packed_cross_attention_equals_per_pair_calls():
    pairs, dim, heads = [(0, 1), (1, 0), (2, 4), (4, 2), (0, 4)], 32, 2
    module = CrossPartAttention(pairs, dim, heads, backend="sdpa")
    parts = torch.randn(2, 5, 9, dim)
    lengths = torch.tensor([9, 3])
    queries, keys = parts[:, [a for a, _ in pairs]], parts[:, [b for _, b in pairs]]
    packed = module(queries, keys, lengths)
    for i, (a, b) in enumerate(pairs):
        q = rearrange(parts[:, a] @ module.q.weight[i] + module.q.bias[i], "b n (h e) -> b n h e", h=heads)
        k, v = rearrange(parts[:, b] @ module.kv.weight[i] + module.kv.bias[i], "b n (two h e) -> two b n h e",
                         two=2, h=heads)
        out = attention(q, k, v, backend="math", q_lengths=lengths, kv_lengths=lengths)
        alone = rearrange(out, "b n h e -> b n (h e)") @ module.proj.weight[i] + module.proj.bias[i]
        valid = torch.arange(9)[None] < lengths[:, None]
        torch.testing.assert_close(packed[:, i][valid], alone[valid], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_cls", [BPMT, Baseline])
def test_models_run_under_torch_compile(model_cls):
    """Whole-graph capture (aot_eager: traces like inductor, without compiling C++ on the CPU test box)."""
    model = model_cls(dataclasses.replace(SMALL, attn_backend="sdpa")).eval()
    poses, lengths = poses_batch()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        expected = model(poses, lengths)["inference_feat"]["embeddings"]
        got = compiled(poses, lengths)["inference_feat"]["embeddings"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_model_input_errors():
    model = BPMT(SMALL).eval()  # value checks (lengths, NaN) run outside training: the data path validates there
    poses, lengths = poses_batch()
    with pytest.raises(ValueError, match="joints"):
        model(torch.randn(2, 5, 18, 3))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 5, 17, 2))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 23\]"):
        model(poses, torch.tensor([0, 5, 5, 5]))
    with pytest.raises(ValueError, match="NaN or inf"):
        bad = poses.clone()
        bad[1, 0, 3, 0] = float("nan")
        model(bad, lengths)
    with pytest.raises(ValueError, match="frame_mask"):
        model(poses, lengths, torch.zeros(4, 1, FRAMES, dtype=torch.bool), stage="part")
    with pytest.raises(ValueError, match="unknown stage"):
        model(poses, lengths, stage="pretrain")
    with pytest.raises(ValueError, match="stages"):
        Baseline(SMALL)(poses, lengths, stage="pair")
    with pytest.raises(BackendError, match="valid names"):
        BPMT(dataclasses.replace(SMALL, attn_backend="nonsense"))
    with pytest.raises(ValueError, match="skeleton|format"):
        BPMT(dataclasses.replace(SMALL, skeleton="kinect"))

"""PackedLayout: built once per forward, packing backends equal the padded references, and neither the layout nor
any attention call syncs with the host or indexes with a boolean mask."""
import dataclasses
import sys
from collections import Counter

import pytest
import torch

from bpmt_fast.attention import BACKENDS, layout
from bpmt_fast.attention.layout import PackedLayout
from bpmt_fast.model import BPMT, Baseline, CrossPartAttention, ModelConfig, PartSelfAttention

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ModelConfig(dim=16, heads=2, part_layers=1, pair_layers=1, mlp_ratio=2.0, dropout=0.0, embedding_dim=8,
                   num_classes=3)
ODD_LENGTHS = torch.tensor([1, 7, 13, 29])
# Packing backends and the padded reference computing the same function (flow attention is not softmax).
PACKED_VS_REFERENCE = [("triton", "math"), ("flow-triton", "flow")]


def _skip_unavailable(name):
    reason = BACKENDS[name].why_unavailable()
    if reason:
        pytest.skip(f"{name}: {reason}")


def _poisoned(shape, lengths, requires_grad=True):
    """Random `(B, N, ...)` with NaN in every padded token: packing must never read them."""
    x = torch.randn(*shape)
    valid = torch.arange(shape[1])[None] < lengths[:, None]  # (B, N)
    x[~valid] = float("nan")
    return x.requires_grad_(requires_grad)


def _grouped(x, groups):
    """`(B, N, d)` -> `(B, G, N, d)` with a different copy per group (keeps NaN where x has it)."""
    return torch.stack([x * (g + 1) for g in range(groups)], 1)


def _valid_close(got, expected, lengths, token_axis):
    """Compare valid tokens only (axis `token_axis` indexes tokens, axis 0 samples)."""
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(got[b].narrow(token_axis - 1, 0, n), expected[b].narrow(token_axis - 1, 0, n),
                                   atol=2e-5, rtol=2e-4)


def test_layout_indices_match_boolean_mask():
    """The integer index and offsets equal what a boolean mask would give, explicit host ints or not."""
    lengths, groups, n = torch.tensor([3, 1, 5]), 2, 5
    explicit = PackedLayout.from_lengths(lengths, groups, n, max_len=5, length_sum=9)
    computed = PackedLayout.from_lengths(lengths, groups, n)
    mask = torch.arange(n)[None] < lengths.repeat_interleave(groups)[:, None]  # (S, N)
    for built in (explicit, computed):
        assert built.total == 18 and built.max_seqlen == 5 and built.sequences == 6
        assert torch.equal(built.index, mask.flatten().nonzero()[:, 0])
        assert torch.equal(built.cu_seqlens, layout.cu_seqlens_from_lengths(lengths.repeat_interleave(groups)))
        x = torch.randn(6, n, 2, 3)
        torch.testing.assert_close(built.pack(x), x[mask])
        torch.testing.assert_close(built.unpack(built.pack(x)), torch.where(mask[..., None, None], x, 0.0))


def test_unpadded_layout_packs_by_view():
    """All lengths == N: no index, packing is a reshape view of the projection, unpacking a view too."""
    built = PackedLayout.from_lengths(torch.tensor([4, 4]), 3, 4, max_len=4, length_sum=8)
    assert built.index is None and built.lengths is None and not built.padded
    assert torch.equal(built.cu_seqlens, torch.arange(0, 25, 4, dtype=torch.int32))
    x = torch.randn(6, 4, 3, 2, 5)
    assert built.pack(x).data_ptr() == x.data_ptr() and built.pack(x).shape == (24, 3, 2, 5)
    assert built.unpack(built.pack(x)).data_ptr() == x.data_ptr()


def _twin_modules(make, name, reference):
    """The same module twice, one on the packing backend and one on the padded reference, equal weights."""
    _skip_unavailable(name)
    packed, padded = make(name), make(reference)
    padded.load_state_dict(packed.state_dict())
    return packed, padded


def _forward_backward(module, inputs, lengths, *args):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = module(*inputs, *args)  # (B, G, N, d)
    valid = (torch.arange(out.shape[2])[None] < lengths[:, None])[:, None, :, None]  # (B, 1, N, 1)
    torch.where(valid, out * torch.linspace(-1, 1, out.shape[-1]), 0.0).sum().backward()
    return out, [x.grad for x in inputs]


@pytest.mark.parametrize("name, reference", PACKED_VS_REFERENCE)
@pytest.mark.parametrize("prebuilt", [True, False], ids=["layout", "lengths"])
def test_part_self_attention_packed_equals_reference(name, reference, prebuilt):
    groups, n = 3, int(ODD_LENGTHS.max())
    packed, padded = _twin_modules(lambda b: PartSelfAttention(groups, 16, 2, backend=b), name, reference)
    x = _grouped(_poisoned((4, n, 16), ODD_LENGTHS), groups)  # (B, G, N, d)
    built = PackedLayout.from_lengths(ODD_LENGTHS, groups, n, 29, 50) if prebuilt else ODD_LENGTHS
    got, (got_grad,) = _forward_backward(packed, [x], ODD_LENGTHS, built)
    expected, (expected_grad,) = _forward_backward(padded, [x], ODD_LENGTHS, ODD_LENGTHS)
    _valid_close(got, expected, ODD_LENGTHS, token_axis=2)
    _valid_close(got_grad, expected_grad, ODD_LENGTHS, token_axis=2)
    assert torch.isfinite(got_grad).all()  # NaN padding got zero gradient, and leaked nowhere


@pytest.mark.parametrize("name, reference", PACKED_VS_REFERENCE)
def test_cross_part_attention_packed_equals_reference(name, reference):
    pairs, n = [(0, 1), (1, 0), (2, 0)], int(ODD_LENGTHS.max())
    packed, padded = _twin_modules(lambda b: CrossPartAttention(pairs, 16, 2, backend=b), name, reference)
    queries = _grouped(_poisoned((4, n, 16), ODD_LENGTHS), len(pairs))  # (B, Q, N, d)
    keys = _grouped(_poisoned((4, n, 16), ODD_LENGTHS), len(pairs)).flip(1)
    built = PackedLayout.from_lengths(ODD_LENGTHS, len(pairs), n, 29, 50)
    got, got_grads = _forward_backward(packed, [queries, keys], ODD_LENGTHS, built)
    expected, expected_grads = _forward_backward(padded, [queries, keys], ODD_LENGTHS, ODD_LENGTHS)
    _valid_close(got, expected, ODD_LENGTHS, token_axis=2)
    for g, e in zip(got_grads, expected_grads):
        _valid_close(g, e, ODD_LENGTHS, token_axis=2)
        assert torch.isfinite(g).all()


def _bpmt_step(model, poses, lengths, frame_mask, stage, **host):
    """A training-mode forward + backward; returns the loss and the parameter gradients."""
    model.zero_grad()
    out = model(poses, lengths, frame_mask, stage=stage, **host)
    feat = out["training_feat"]
    if stage == "finetune":
        loss = feat["embeddings"].square().mean() + feat["logits"].logsumexp(1).mean()
    else:
        recon = feat["reconstruction"]
        valid = recon["valid"][:, None, :, None]  # (B, 1, T, 1)
        loss = torch.where(valid, recon["pred"] - recon["target"], 0.0).square().mean()
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


LENGTHS_BPMT = torch.tensor([7, 1, 5])


# flow-triton runs ~40 s a stage in the interpreter: "pair" alone covers both its layouts (parts, part pairs).
@pytest.mark.parametrize("name, reference, stage", [("triton", "math", "pair"), ("triton", "math", "finetune"),
                                                    ("flow-triton", "flow", "pair")])
def test_bpmt_packed_equals_reference(name, reference, stage):
    """Whole model, training mode, host ints given, NaN in padded frames: same loss and gradients."""
    _skip_unavailable(name)
    packed = BPMT(dataclasses.replace(TINY, attn_backend=name))
    padded = BPMT(dataclasses.replace(TINY, attn_backend=reference))
    padded.load_state_dict(packed.state_dict())
    frames = int(LENGTHS_BPMT.max())
    poses = _poisoned((3, frames, 17, 3), LENGTHS_BPMT, requires_grad=False)
    frame_mask = (torch.rand(3, 5, frames) < 0.4) if stage != "finetune" else None
    got_loss, got = _bpmt_step(packed, poses, LENGTHS_BPMT, frame_mask, stage, max_length=7, total_length=13)
    expected_loss, expected = _bpmt_step(padded, poses, LENGTHS_BPMT, frame_mask, stage)
    torch.testing.assert_close(got_loss, expected_loss, atol=1e-5, rtol=1e-4)
    assert got.keys() == expected.keys() and got
    for key in got:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-4, msg=key)


# ---- host syncs and boolean-mask indexing, counted where they are called from ----
OUR_CODE = ("bpmt_fast/attention/", "bpmt_fast/model/")
SYNCING_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero")


def _is_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _ours(frame) -> bool:
    return any(part in frame.f_code.co_filename.replace("\\", "/") for part in OUR_CODE)


@pytest.fixture
def sync_counter(monkeypatch):
    """Counter of host syncs (`item`, `int(t)`, `bool(t)`, ...) and boolean-mask indexing done by our model
    and attention code. The Triton interpreter reads CPU tensors itself: only callers in OUR_CODE count."""
    counts = Counter()

    def counting(name, original, when=lambda *a: True):
        def wrapper(*args, **kwargs):
            if when(*args) and _ours(sys._getframe(1)):
                counts[name] += 1
            return original(*args, **kwargs)
        return wrapper

    for name in SYNCING_METHODS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "nonzero", counting("torch.nonzero", torch.nonzero))
    is_mask_index = lambda self, index, *rest: _is_bool_index(index)  # noqa: E731
    for name in ("__getitem__", "__setitem__", "index_put", "index_put_"):
        monkeypatch.setattr(torch.Tensor, name, counting(f"bool mask {name}", getattr(torch.Tensor, name),
                                                         is_mask_index))
    return counts


def test_sync_counter_sees_boolean_packing(sync_counter):
    """The counter works: the old boolean-mask packing, called from our code, is seen."""
    x = torch.randn(2, 4, 1, 3)
    layout.unpack(layout.pack(x, torch.tensor([4, 2])), torch.tensor([4, 2]), 4)
    assert sync_counter["bool mask __getitem__"] >= 1


def layouts_built(monkeypatch) -> Counter:
    """Counts PackedLayout constructions by number of sequences (B * groups)."""
    built = Counter()
    original_init = PackedLayout.__init__

    def counting_init(self, sequences, *args, **kwargs):
        built[sequences] += 1
        original_init(self, sequences, *args, **kwargs)

    monkeypatch.setattr(PackedLayout, "__init__", counting_init)
    return built


@pytest.mark.parametrize("name", ["triton", "flow-triton"])
def test_bpmt_training_step_does_not_sync(name, sync_counter, monkeypatch):
    """Training forward + backward with a packing backend and the collate's host ints: no host sync, no boolean
    mask indexing in model or attention code, and one PackedLayout per group count (parts, part pairs)."""
    _skip_unavailable(name)
    built = layouts_built(monkeypatch)
    model = BPMT(dataclasses.replace(TINY, attn_backend=name))
    lengths = torch.tensor([5, 2])
    poses = _poisoned((2, 5, 17, 3), lengths, requires_grad=False)
    frame_mask = torch.rand(2, 5, 5) < 0.4
    sync_counter.clear()
    _bpmt_step(model, poses, lengths, frame_mask, "pair", max_length=5, total_length=7)
    assert not sync_counter, f"host syncs / boolean masks in our code: {dict(sync_counter)}"
    assert built == {2 * 5: 1, 2 * len(model.pairs): 1}


@pytest.mark.parametrize("model_cls, groups", [(BPMT, (5, 20)), (Baseline, (1,))])
def test_one_layout_per_group_count_per_forward(model_cls, groups, monkeypatch):
    built = layouts_built(monkeypatch)
    config = dataclasses.replace(TINY, part_layers=3, pair_layers=2, attn_backend="math")
    model = model_cls(config)
    lengths = torch.tensor([6, 3, 4])
    stage = "pair" if model_cls is BPMT else "part"
    frame_mask = torch.rand(3, groups[0], 6) < 0.4
    model(torch.randn(3, 6, 17, 3), lengths, frame_mask, stage=stage)
    assert built == {3 * g: 1 for g in groups}


def test_training_forward_skips_value_checks_eval_keeps_them(sync_counter):
    """Training: no value check (no sync from the model, NaN poses pass through); eval and check_values=True
    still reject NaN poses and bad lengths with the usual messages."""
    model = BPMT(dataclasses.replace(TINY, attn_backend="sdpa"))
    lengths = torch.tensor([6, 3])
    poses = torch.randn(2, 6, 17, 3)
    bad = poses.clone()
    bad[1, 0, 3, 0] = float("nan")
    sync_counter.clear()
    model(bad, lengths)  # training mode: the data path has validated; no check here
    assert not sync_counter, dict(sync_counter)
    with pytest.raises(ValueError, match="NaN or inf"):
        model(bad, lengths, check_values=True)
    model.eval()
    with pytest.raises(ValueError, match="NaN or inf"):
        model(bad, lengths)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 6\]"):
        model(poses, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 6\]"):
        Baseline(TINY).eval()(poses, torch.tensor([7, 3]))
    with pytest.raises(ValueError, match="lengths must have shape"):
        model.train()(poses, torch.tensor([6, 3, 2]))  # shape checks are free: they run in training too

"""The `triton` and `flow-triton` backends under torch.compile: their custom ops pass `torch.library.opcheck`,
and the attention modules compile with fullgraph=True (a graph break raises) on packed layouts, giving the eager
outputs and gradients. CPU tensors run the kernels in the Triton interpreter (conftest sets TRITON_INTERPRET);
`aot_eager` needs no C++ compiler and still traces forward and backward through the ops' fake implementations.
"""
import pytest
import torch

from bpmt_fast.attention import BACKENDS
from bpmt_fast.attention.layout import PackedLayout
from bpmt_fast.model.attention_blocks import CrossPartAttention, PartSelfAttention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# test_aot_dispatch_dynamic retraces with dynamic shapes and runs the kernels several more times; under the
# interpreter that multiplies the cost of every check for no extra coverage of our code (the fake functions only
# read shapes), so it is left to CUDA machines.
OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static") + (
    ("test_aot_dispatch_dynamic",) if DEVICE == "cuda" else ())


def _require(name):
    reason = BACKENDS[name].why_unavailable()  # no triton, or neither CUDA nor the interpreter
    if reason:
        pytest.skip(f"{name} unavailable: {reason}")


def _packed(total_lengths, heads=2, dim=16, dim_v=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cu = torch.tensor([0, *torch.tensor(total_lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    total = int(cu[-1])

    def rand(d):
        return torch.randn(total, heads, d, generator=gen).to(DEVICE).requires_grad_()
    return rand(dim), rand(dim), rand(dim_v), cu


@pytest.mark.parametrize("pack_rows", [True, False])
def test_varlen_attention_ops_opcheck(pack_rows):
    _require("triton")
    from bpmt_fast.attention.triton import varlen_attention_fwd
    q, k, v, cu = _packed([5, 3, 7])
    kv_index = torch.arange(cu.numel() - 1, dtype=torch.int32, device=DEVICE)
    args = (q, k, v, cu, cu, kv_index, 7, 7, 16 ** -0.5, pack_rows, True)
    torch.library.opcheck(varlen_attention_fwd, args, test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("fused_qkv", [True, False], ids=["qkv", "q_kv"])
def test_padded_attention_op_opcheck(fused_qkv):
    """The model's padded calls: fused projections read in place, one fused gradient back."""
    _require("triton")
    from bpmt_fast.attention.triton import padded_attention
    gen = torch.Generator().manual_seed(0)
    kv = torch.randn(3, 7, 3 if fused_qkv else 2, 2, 16, generator=gen).to(DEVICE).requires_grad_()
    q = None if fused_qkv else torch.randn(3, 7, 2, 16, generator=gen).to(DEVICE).requires_grad_()
    lengths = torch.tensor([7, 2, 5], dtype=torch.int32, device=DEVICE)
    torch.library.opcheck(padded_attention, (q, kv, lengths, 7, 16 ** -0.5), test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("causal", [False, True])
def test_flow_attention_ops_opcheck(causal):
    _require("flow-triton")
    from bpmt_fast.attention.flow_triton import flow_attention_fwd
    q, k, v, cu = _packed([5, 3, 7])
    torch.library.opcheck(flow_attention_fwd, (q, k, v, cu, cu, causal, 1e-6, 7), test_utils=OPCHECK_TESTS)


def _assert_compiled_matches_eager(module, inputs, layout):
    """fullgraph=True: a graph break anywhere in the forward (or its backward trace) raises."""
    eager_inputs = [x.detach().clone().requires_grad_() for x in inputs]
    compiled_inputs = [x.detach().clone().requires_grad_() for x in inputs]
    expected = module(*eager_inputs, layout)
    expected.square().sum().backward()
    expected_grads = [x.grad for x in eager_inputs] + [p.grad.clone() for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    got = compiled(*compiled_inputs, layout)
    got.square().sum().backward()
    got_grads = [x.grad for x in compiled_inputs] + [p.grad for p in module.parameters()]
    # Same launches on the same inputs: equal up to the rounding of the surrounding (traced) torch ops.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def _layout(lengths, groups, n):
    """Packed layout from host ints, built outside the compiled function (no host sync inside the graph)."""
    lengths = torch.tensor(lengths, device=DEVICE)
    return PackedLayout.from_lengths(lengths, groups, n, int(lengths.max()), int(lengths.sum()), pack=True)


@pytest.mark.parametrize("backend", ["triton", "flow-triton"])
def test_part_self_attention_compiles_fullgraph(backend):
    _require(backend)
    torch.manual_seed(0)
    batch, groups, n, dim = 2, 3, 8, 32
    module = PartSelfAttention(groups, dim, heads=2, backend=backend).to(DEVICE)
    x = torch.randn(batch, groups, n, dim, device=DEVICE)
    _assert_compiled_matches_eager(module, [x], _layout([8, 5], groups, n))


@pytest.mark.parametrize("backend", ["triton", "flow-triton"])
def test_cross_part_attention_compiles_fullgraph(backend):
    _require(backend)
    torch.manual_seed(1)
    batch, n, dim = 2, 8, 32
    pairs = [(0, 1), (1, 0), (2, 1)]
    module = CrossPartAttention(pairs, dim, heads=2, backend=backend).to(DEVICE)
    queries = torch.randn(batch, len(pairs), n, dim, device=DEVICE)
    keys = torch.randn(batch, len(pairs), n, dim, device=DEVICE)
    _assert_compiled_matches_eager(module, [queries, keys], _layout([6, 8], len(pairs), n))


def test_the_whole_bpmt_training_forward_compiles_with_the_packed_triton_backend():
    """The model forward as training runs it (packed layout from the collate's host ints, our Triton kernels as
    custom ops) traces into one graph, and the compiled forward and backward equal eager."""
    from bpmt_fast.model import BPMT, ModelConfig

    torch.manual_seed(0)
    model = BPMT(ModelConfig(dim=16, heads=2, part_layers=1, pair_layers=1, embedding_dim=8, num_classes=3,
                             attn_backend="triton", dropout=0.0)).train()
    poses, lengths = torch.randn(3, 9, 17, 3), torch.tensor([9, 4, 6])  # (B, T, J, C), (B,)

    def embeddings(p, l):
        return model(p, l, stage="finetune", max_length=9, total_length=19)["training_feat"]["embeddings"]

    eager = embeddings(poses, lengths)
    eager_grads = torch.autograd.grad(eager.square().sum(), list(model.parameters()), allow_unused=True)
    compiled = torch.compile(embeddings, fullgraph=True, backend="aot_eager")(poses, lengths)
    grads = torch.autograd.grad(compiled.square().sum(), list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(grads, eager_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)

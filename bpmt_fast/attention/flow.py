"""`flow`: Flowformer flow attention (linear in sequence length), naive PyTorch reference.

Not exact: it is a different attention function (conservation flows instead of a softmax over keys), so it is
never chosen by `auto` and is compared with itself, not with `math`. It has no softmax scale.
"""
from bpmt_fast.reference.flow import flow_attention_reference

from .base import AttentionBackend


class FlowBackend(AttentionBackend):
    NAME = "flow"
    DESCRIPTION = "Flowformer flow attention, naive PyTorch reference (linear in N, not softmax-exact)"
    IS_EXACT = False
    SUPPORTS_CAUSAL = True
    SUPPORTS_CUSTOM_SCALE = False

    @classmethod
    def version(cls):
        return "reference"

    def _padded(self, q, k, v, q_lengths, kv_lengths, scale, causal):
        return flow_attention_reference(q, k, v, q_lengths=q_lengths, kv_lengths=kv_lengths, causal=causal)

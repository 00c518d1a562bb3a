"""`math`: the naive PyTorch reference (fp32 inside). Exact by definition, any device, slow."""
from bpmt_fast.reference.softmax import softmax_attention_reference

from .base import AttentionBackend


class MathBackend(AttentionBackend):
    NAME = "math"
    DESCRIPTION = "naive PyTorch reference, fp32 inside, full score matrix"
    SUPPORTS_CAUSAL = True

    @classmethod
    def version(cls):
        return "reference"

    def _padded(self, q, k, v, q_lengths, kv_lengths, scale, causal):
        return softmax_attention_reference(q, k, v, q_lengths=q_lengths, kv_lengths=kv_lengths, scale=scale,
                                           causal=causal)

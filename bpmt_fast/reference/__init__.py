"""Naive PyTorch references (fp32 inside): the definitions that every fast path is tested against."""
from .flow import flow_attention_reference
from .softmax import softmax_attention_reference

__all__ = ["softmax_attention_reference", "flow_attention_reference"]

"""Models: skeleton formats, part tokenizer, part / cross-part attention blocks, BPMT and the baseline."""
from .attention_blocks import CrossPartAttention, CrossPartBlock, PartSelfAttention, PartTransformerBlock
from .baseline import Baseline
from .bpmt import BPMT, STAGES, ordered_part_pairs
from .common import ModelConfig
from .skeleton import FORMATS, PART_NAMES, SkeletonFormat, get_format
from .tokenizer import PartTokenizer

__all__ = ["BPMT", "Baseline", "ModelConfig", "PartSelfAttention", "CrossPartAttention", "PartTransformerBlock",
           "CrossPartBlock", "PartTokenizer", "SkeletonFormat", "FORMATS", "PART_NAMES", "get_format", "STAGES",
           "ordered_part_pairs"]

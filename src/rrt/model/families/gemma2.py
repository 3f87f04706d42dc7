"""Gemma 2: sliding-window and global attention alternate per depth (`config.layer_types`,
which rrt keeps per depth), four norms per layer, soft-capped attention and final logits."""
from .spec import LLAMA_LAYOUT, Family

GEMMA2 = Family(
    name="gemma2",
    **LLAMA_LAYOUT,
    # Not measured: transformers has no SDPA attention for Gemma 2 (its eager attention adds an
    # s² term). Llama's breakdown (llama.py) with four RMSNorms of the fp32 residual: 42·d.
    activation_coeffs=(42, 4, 4, 8),
    final_bytes=10,  # RMSNorm: its fp32 input and output (4 + 4), and the bf16 head input (2)
    norm_weight_offset=1.0,  # (1 + w) RMSNorms
    hub_shapes={},
)

"""Gemma 3 (text): Gemma 2's layout with q/k norms, and one rotary embedding per attention
type (local and global bases differ), which the serving engine picks row by row."""
import torch

from .spec import LLAMA_LAYOUT, Family


class Gemma3Family(Family):
    def rotary_for_rows(self, rotary, hidden, positions, row_types, layer_types):
        """(cos, sin) of each row from the rotary embedding of its depth's attention type."""
        kind = row_types[:, None, None]
        per_type = [rotary(hidden, positions, t) for t in layer_types]
        cos = torch.stack([c for c, _ in per_type]).gather(0, kind.expand(-1, *per_type[0][0].shape[1:])[None])[0]
        sin = torch.stack([s for _, s in per_type]).gather(0, kind.expand(-1, *per_type[0][1].shape[1:])[None])[0]
        return cos, sin


GEMMA3 = Gemma3Family(
    name="gemma3_text",
    **LLAMA_LAYOUT,
    # Measured (tests/test_budget.py): Gemma 2's 42·d, and the fp32 q/k norms' input and
    # output add 8·d_q and 8·d_kv.
    activation_coeffs=(42, 12, 12, 8),
    final_bytes=10,  # RMSNorm: its fp32 input and output (4 + 4), and the bf16 head input (2)
    norm_weight_offset=1.0,  # (1 + w) RMSNorms
    hub_shapes={},
)

"""Parameter accounting. The paper reports non-embedding parameters; LoRA counts towards
them (Gemma 2B recursive B=2: 0.99B at r=0, 1.07B at r=64)."""
from __future__ import annotations

from torch import nn

from .relax import DepthLinear


def count_params(model: nn.Module) -> dict[str, int]:
    """Unique parameters (tied ones once): embedding (input and output embeddings),
    non_embedding (everything else, LoRA included), lora, total."""
    embedding_ids = set()
    for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
        if emb is not None:
            embedding_ids.update(id(p) for p in emb.parameters())
    lora_ids = {id(p) for m in model.modules() if isinstance(m, DepthLinear) for p in (m.lora_A, m.lora_B) if p is not None}
    counts = {"non_embedding": 0, "lora": 0, "embedding": 0, "total": 0}
    for p in model.parameters():  # parameters() already yields shared tensors once
        n = p.numel()
        counts["total"] += n
        if id(p) in embedding_ids:
            counts["embedding"] += n
        else:
            counts["non_embedding"] += n
        if id(p) in lora_ids:
            counts["lora"] += n
    return counts

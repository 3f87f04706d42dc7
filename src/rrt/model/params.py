"""Parameter accounting. The paper reports non-embedding parameters; LoRA counts towards
them (Gemma 2B recursive B=2: 0.99B at r=0, 1.07B at r=64). `compute_params` counts what
a token meets instead: the unrolled model, each shared layer once per depth it runs at."""
from __future__ import annotations

from torch import nn

from .modeling import RecursiveForCausalLM
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


def compute_params(model: nn.Module) -> dict[str, int]:
    """Matrix-multiply weights one token meets in a forward pass of the unrolled model, so
    that 2 * total is its forward FLOPs per token apart from attention scores (QK^T, AV):
    layers (every depth: its shared layer's linears, counted once per depth that runs them,
    plus that depth's own LoRA A and B), head (the LM head, tied or not), total. The input
    embedding is a lookup (no FLOPs); norms, biases and activations are not counted."""
    head = model.get_output_embeddings()
    runs: dict[int, int] = {}  # id(linear) -> depths that run it, where not 1
    if isinstance(model, RecursiveForCausalLM):
        for slot, block in enumerate(model.recursive_block):
            for module in block.modules():
                runs[id(module)] = model.config.layer_map.count(slot)
    layers = 0
    for module in model.modules():
        if module is head:
            continue
        if isinstance(module, nn.Linear):
            layers += runs.get(id(module), 1) * module.weight.numel()
        elif isinstance(module, DepthLinear) and module.rank > 0:
            layers += module.lora_A.numel() + module.lora_B.numel()
    head_params = head.weight.numel() if head is not None else 0
    return {"layers": layers, "head": head_params, "total": layers + head_params}

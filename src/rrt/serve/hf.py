"""The reference: transformers' own `generate`, greedy, in static batches (left-padded, as
a batch of a plain HF serving loop would be), each continuation cut after its first EOS."""
from __future__ import annotations

import torch
from transformers import GenerationConfig


@torch.inference_mode()
def hf_generate(model, prompts: list[list[int]], max_new_tokens: int, *, batch_size: int = 8,
                pad_token_id: int = 0, eos_token_id: int | None = None) -> list[list[int]]:
    """Generated ids per prompt, in input order."""
    device = next(model.parameters()).device
    # Our settings alone (the model's own generation config may name an EOS or sampling).
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id,
                              eos_token_id=eos_token_id)
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(batch):
            ids[i, width - len(p):] = torch.tensor(p, device=device)
            mask[i, width - len(p):] = 1
        generated = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        for row in generated[:, width:].tolist():
            if eos_token_id is not None and eos_token_id in row:
                row = row[: row.index(eos_token_id) + 1]
            out.append(row)
    return out

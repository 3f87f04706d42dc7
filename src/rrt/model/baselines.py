"""Reduced-size baselines (paper Sec. 3): a plain, non-recursive model with as many
layers as the recursive model has unique ones, so the non-embedding sizes match.
Initialised from the base model's first K layers (`lower`) or at random (`scratch`)."""
from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..settings import REDUCED_INITS
from .families import family_of


@torch.no_grad()
def reduce_depth(base: PreTrainedModel, num_layers: int, init: str = "lower", seed: int = 0) -> PreTrainedModel:
    """The base family's own CausalLM with `num_layers` layers."""
    family = family_of(base.config)
    if not 1 <= num_layers <= base.config.num_hidden_layers:
        raise ValueError(f"layers must be in 1..{base.config.num_hidden_layers}, got {num_layers}")
    if init not in REDUCED_INITS:
        raise ValueError(f"init must be one of {REDUCED_INITS}, got {init!r}")
    config = family.with_layers(base.config, num_layers)
    torch.manual_seed(seed)
    model = family.causal_lm_cls(config)(config).to(base.get_input_embeddings().weight.dtype)
    if init == "lower":
        # The first K layers and everything outside the layers keep their names.
        missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        prefix = family.layers_path + "."
        stray = [k for k in unexpected
                 if not k.startswith(prefix) or int(k[len(prefix):].split(".")[0]) < num_layers]
        if missing or stray:
            raise RuntimeError(f"state dicts disagree: missing {missing[:3]}, unexpected {stray[:3]}")
    return model.eval()

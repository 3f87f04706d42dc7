"""The model families rrt supports: one module per family, each holding that family's
`Family` spec (`spec.py` says what a spec holds). Adding a family is one module beside
these and its spec in `FAMILIES` below; docs/adding-a-family.md walks through it."""
from __future__ import annotations

import contextlib

from transformers import PreTrainedConfig

from .gemma import GEMMA
from .gemma2 import GEMMA2
from .gemma3 import GEMMA3
from .gpt_neox import GPT_NEOX
from .llama import LLAMA
from .spec import Family

FAMILIES: dict[str, Family] = {f.name: f for f in (LLAMA, GEMMA, GEMMA2, GEMMA3, GPT_NEOX)}


def family_of(config: PreTrainedConfig) -> Family:
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model family {model_type!r}; supported: {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


@contextlib.contextmanager
def without_layers(config: PreTrainedConfig):
    """Build a family model with no decoder layers (they are replaced by depth views
    anyway), so conversion never allocates the L original layers twice."""
    num_layers = config.num_hidden_layers
    config.num_hidden_layers = 0
    try:
        yield
    finally:
        config.num_hidden_layers = num_layers

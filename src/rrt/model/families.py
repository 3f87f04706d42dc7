"""One small adapter per model family. Everything else in rrt is family-agnostic: it reuses
the family's own transformers classes (CausalLM, backbone forward, decoder layer, masks,
rotary embeddings, caches) and only needs to know where the layers live and which of a
layer's linears are attention and which MLP."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

from transformers import AutoModelForCausalLM, PreTrainedConfig


@dataclass(frozen=True)
class Family:
    name: str
    layers_path: str  # the decoder-layer ModuleList inside the family's CausalLM
    attn: str  # attention submodule of a decoder layer
    mlp: str  # MLP submodule of a decoder layer
    norm_path: str  # the final norm, between the last decoder layer and the LM head

    def causal_lm_cls(self, config: PreTrainedConfig) -> type:
        return AutoModelForCausalLM._model_mapping[type(config)]

    def layer_cls(self, config: PreTrainedConfig) -> type:
        lm_cls = self.causal_lm_cls(config)
        (name,) = lm_cls._no_split_modules
        return getattr(sys.modules[lm_cls.__module__], name)

    def module_group(self, path: str) -> str:
        """'attn' or 'mlp' for a linear at `path` inside a decoder layer."""
        head = path.split(".", 1)[0]
        if head == self.attn:
            return "attn"
        if head == self.mlp:
            return "mlp"
        raise ValueError(f"{self.name}: linear {path!r} is neither in {self.attn!r} nor in {self.mlp!r}")


FAMILIES = {
    # Llama 2/3, TinyLlama, SmolLM2
    "llama": Family("llama", "model.layers", "self_attn", "mlp", "model.norm"),
    # Gemma 1 (Gemma 2B of the paper)
    "gemma": Family("gemma", "model.layers", "self_attn", "mlp", "model.norm"),
    # Gemma 2 and 3: sliding/global attention alternate per depth
    "gemma2": Family("gemma2", "model.layers", "self_attn", "mlp", "model.norm"),
    "gemma3_text": Family("gemma3_text", "model.layers", "self_attn", "mlp", "model.norm"),
    # Pythia: parallel residual, fused QKV, biases
    "gpt_neox": Family("gpt_neox", "gpt_neox.layers", "attention", "mlp", "gpt_neox.final_layer_norm"),
}


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

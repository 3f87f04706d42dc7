"""`Family`: everything rrt knows about one transformers model family, in one place.

A family's module (`llama.py`, `gemma.py`, ...) builds one `Family` and the registry in
`__init__.py` lists it. Everything else in rrt is family-agnostic: it reuses the family's
own transformers classes (CausalLM, decoder layer, masks, rotary embeddings, caches) and
asks the spec only what differs between families:
    adapter       where the layers, final norm and rotary embedding live; which linears
                  of a layer are attention and which MLP
    serving       the decoder layer's cache argument, the norm before attention, and how
                  a batch of rows at different depths gets its rotary (cos, sin)
    `rrt plan`    activation bytes per token per depth, the final norm's and head's bytes,
                  and the published shapes of the family's hub models (offline sizes)
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field

from transformers import AutoModelForCausalLM, PreTrainedConfig


# The decoder layout of Llama and of the families transformers derives from it (Gemma 1/2/3
# here): module paths, cache argument, and the linears that read the normalised residual.
LLAMA_LAYOUT = dict(
    layers_path="model.layers", norm_path="model.norm", rotary_path="model.rotary_emb",
    attn="self_attn", mlp="mlp", attention_norm="input_layernorm",
    cache_kwarg="past_key_values",
    reads_residual=frozenset({"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}),
)


@dataclass(frozen=True, kw_only=True)
class Family:
    name: str  # the config's model_type
    # --- adapter: module paths in the family's CausalLM and decoder layer ---
    layers_path: str  # the decoder-layer ModuleList inside the CausalLM
    norm_path: str  # the final norm, between the last decoder layer and the LM head
    rotary_path: str  # the backbone's rotary embedding module
    attn: str  # attention submodule of a decoder layer
    mlp: str  # MLP submodule of a decoder layer
    attention_norm: str  # the decoder layer's norm whose output the attention reads
    # --- serving engine ---
    cache_kwarg: str  # the name of the decoder layer's (and its attention's) KV-cache argument
    # --- `rrt plan` (rrt.train.budget) ---
    # Activation bytes per token per depth under bf16 autocast: coefficients of
    # (d, d_q, d_kv, d_ffn), d_q = heads·head_dim, d_kv = kv_heads·head_dim.
    activation_coeffs: tuple[int, int, int, int]
    final_bytes: int  # per token × d: the final norm's saved tensors and the head's bf16 input
    reads_residual: frozenset[str]  # linears that read the normalised residual (their LoRA keeps a bf16 copy)
    # config.json fields of the family's hub models that `rrt plan` sizes offline ({hub id: fields})
    hub_shapes: dict[str, dict] = field(hash=False)
    # --- conversion ---
    # A norm scales by (norm_weight_offset + weight): 0 for Llama's RMSNorm and LayerNorm,
    # 1 for Gemma's (1 + w) RMSNorm; `norm_init="unit"` sets weight = 1 - offset.
    norm_weight_offset: float = 0.0

    def __post_init__(self):
        coeffs = self.activation_coeffs
        if not (isinstance(coeffs, tuple) and len(coeffs) == 4 and all(isinstance(c, int) and c >= 0 for c in coeffs)):
            raise ValueError(f"family {self.name!r}: activation_coeffs must be 4 non-negative ints "
                             f"(d, d_q, d_kv, d_ffn), got {coeffs!r}")
        if not (isinstance(self.final_bytes, int) and self.final_bytes > 0):
            raise ValueError(f"family {self.name!r}: final_bytes must be a positive int, got {self.final_bytes!r}")
        for attr in ("name", "layers_path", "norm_path", "rotary_path", "attn", "mlp", "attention_norm",
                     "cache_kwarg"):
            if not (isinstance(getattr(self, attr), str) and getattr(self, attr)):
                raise ValueError(f"family {self.name!r}: {attr} must be a non-empty string, "
                                 f"got {getattr(self, attr)!r}")

    # --- adapter ----------------------------------------------------------------------
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

    def with_layers(self, config: PreTrainedConfig, num_layers: int) -> PreTrainedConfig:
        """A copy of `config` with its first `num_layers` layers (Gemma 2/3 keep those
        layers' attention types)."""
        config = copy.deepcopy(config)
        config.num_hidden_layers = num_layers
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = config.layer_types[:num_layers]
        return config

    # --- serving engine ---------------------------------------------------------------
    def rotary_for_rows(self, rotary, hidden, positions, row_types, layer_types):
        """(cos, sin) of rows at different depths: `positions` (rows, q), `row_types` (rows,)
        each row's index into `layer_types`. One rotary embedding serves every depth."""
        return rotary(hidden, positions)

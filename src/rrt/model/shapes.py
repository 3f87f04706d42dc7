"""Architectures of the base models without their weights, so that sizes and costs
(`rrt plan`) can be worked out offline, before anything is downloaded.

`HUB_SHAPES` holds the `config.json` fields that matter for the paper's three hub models,
copied from their published configs (the hub is not needed to read them):
    google/gemma-2b                          d 2048, ffn 16384, 18 layers, 8 heads / 1 KV head of
                                             256, vocab 256000, tied head: 2.51B (1.98B non-embedding)
    TinyLlama/TinyLlama-1.1B-step-50K-105b   d 2048, ffn 5632, 22 layers, 32 heads / 4 KV heads,
                                             vocab 32000, untied head: 1.10B
    EleutherAI/pythia-1b                     d 2048, ffn 8192, 16 layers, 8 heads, vocab 50304
                                             (padded), untied head, rotary on 25% of each head,
                                             parallel residual, biases: 1.01B
`base_config(spec)` turns a `base_models` entry of a workflow config into a transformers
config: for `hub`, the HF cache's own config.json when it is there (never the network), else
the table above.
"""
from __future__ import annotations

import copy

from transformers import CONFIG_MAPPING, AutoConfig, PreTrainedConfig

from ..errors import UsageError, first_line
from ..settings import TinyModel
from .base_models import embedded_config, tiny_config

HUB_SHAPES: dict[str, dict] = {
    "google/gemma-2b": {
        "model_type": "gemma", "hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
        "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 256000,
        "tie_word_embeddings": True, "hidden_act": "gelu_pytorch_tanh",  # config.json: "gelu", which
        # transformers reads as the tanh approximation (with a warning)
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "attention_bias": False,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
    },
    "TinyLlama/TinyLlama-1.1B-step-50K-105b": {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
        "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 64, "vocab_size": 32000,
        "tie_word_embeddings": False, "hidden_act": "silu", "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2,
    },
    "EleutherAI/pythia-1b": {
        "model_type": "gpt_neox", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 8, "vocab_size": 50304, "tie_word_embeddings": False, "hidden_act": "gelu",
        "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": True,
        "max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 0,
    },
}


def shape_config(fields: dict) -> PreTrainedConfig:
    """A transformers config from `config.json` fields (legacy names such as GPT-NeoX's
    rotary_pct are converted as when a config.json is read)."""
    fields = copy.deepcopy(fields)
    return CONFIG_MAPPING[fields["model_type"]].from_dict(fields)


def hub_config(hub_id: str) -> PreTrainedConfig:
    """The config of a hub model: from the local HF cache if it holds it (no network
    access is attempted), else from `HUB_SHAPES`."""
    try:
        return AutoConfig.from_pretrained(hub_id, local_files_only=True)
    except Exception as e:  # not cached (or unreadable): the table
        if hub_id in HUB_SHAPES:
            return shape_config(HUB_SHAPES[hub_id])
        raise UsageError(f"hub model {hub_id!r} is neither in the HF cache nor among the embedded shapes "
                         f"({', '.join(HUB_SHAPES)}): {first_line(e)}") from None


def base_config(spec: dict) -> PreTrainedConfig:
    """The architecture of a `base_models` entry ({source: hub|embedded|tiny, ...})."""
    source = spec.get("source")
    if source == "hub":
        if not spec.get("hub_id"):
            raise UsageError("a base model with source hub needs a hub_id")
        return hub_config(spec["hub_id"])
    if source == "embedded":
        return embedded_config()
    if source == "tiny":
        tiny = TinyModel.from_dict(spec.get("tiny") or {}, "tiny")
        vocab = embedded_config()  # the tiny model uses the embedded tokenizer (49152 tokens)
        return tiny_config(vocab.vocab_size, tiny.layers, tiny.hidden_size, vocab.bos_token_id, vocab.eos_token_id)
    raise UsageError(f"unknown base model source {source!r} (expected hub, embedded or tiny)")

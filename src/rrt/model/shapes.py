"""Architectures of the base models without their weights, so that sizes and costs
(`rrt plan`) can be worked out offline, before anything is downloaded.

`HUB_SHAPES` holds the `config.json` fields that matter for the paper's three hub models
(google/gemma-2b, TinyLlama/TinyLlama-1.1B-step-50K-105b, EleutherAI/pythia-1b), copied from
their published configs (the hub is not needed to read them); each family's spec keeps its
own models' (`Family.hub_shapes` in rrt.model.families).

`base_config(spec)` turns a `base_models` entry of a workflow config into a transformers
config: for `hub`, the HF cache's own config.json when it is there (never the network), else
`HUB_SHAPES`.
"""
from __future__ import annotations

import copy

from transformers import CONFIG_MAPPING, AutoConfig, PreTrainedConfig

from ..errors import UsageError, first_line
from ..settings import TinyModel
from .base_models import embedded_config, tiny_config
from .families import FAMILIES

HUB_SHAPES: dict[str, dict] = {
    hub_id: {"model_type": family.name, **fields}
    for family in FAMILIES.values() for hub_id, fields in family.hub_shapes.items()
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

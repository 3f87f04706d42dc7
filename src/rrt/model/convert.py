"""Conversion of a pretrained CausalLM into a (Relaxed) Recursive Transformer."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from ..settings import INITS, LORA_INITS, NORM_INITS, STEPWISE_RULES
from .families import family_of
from .modeling import RecursiveConfig, RecursiveForCausalLM
from .relax import is_norm, truncated_svd
from .sharing import depth_to_slot, init_sources


def parse_rank(value) -> int | str:
    """A LoRA rank: a non-negative integer or 'full'."""
    if value == "full":
        return "full"
    try:
        rank = int(value)
    except (TypeError, ValueError):
        rank = -1
    if rank < 0 or str(value).strip() not in (str(rank), f"+{rank}"):
        raise ValueError(f"rank must be a non-negative integer or 'full', got {value!r}")
    return rank


def rank_caps(text_config) -> dict[str, dict[str, int]]:
    """For each module group ("attn", "mlp"): each linear of a decoder layer (by path) and
    the largest LoRA rank it can hold, the smaller side of its weight (`relax.resolve_rank`)."""
    family = family_of(text_config)
    with torch.device("meta"):
        layer = family.layer_cls(text_config)(text_config, layer_idx=0)
    caps: dict[str, dict[str, int]] = {}
    for path, module in layer.named_modules():
        if isinstance(module, nn.Linear):
            caps.setdefault(family.module_group(path), {})[path] = min(module.in_features, module.out_features)
    return caps


def recorded_rank(rank: int | str, caps: dict[str, int]) -> int | str:
    """The rank to record for a module group: 'full' when `rank` puts every linear of the
    group at its cap (so the config says what was built, not e.g. 10**9), else `rank`
    (a linear smaller than it is still capped, as the paper's sizes assume)."""
    if rank != "full" and rank > 0 and caps and rank >= max(caps.values()):
        return "full"
    return rank


@torch.no_grad()
def convert(base: PreTrainedModel, *, loops: int, init: str = "stepwise", sharing: str = "cycle",
            rank="0", rank_attn=None, rank_mlp=None, lora_init: str = "svd", lora_alpha: float | None = None,
            per_depth_norms: bool = False, stepwise_rule: str = "ends", norm_init: str = "average",
            seed: int = 0) -> RecursiveForCausalLM:
    """Build the recursive model and initialise it from `base` (paper Sec. 2).

    `stepwise_rule` (init stepwise) picks the original layers (`sharing.stepwise_indices`);
    `norm_init` (init average) sets the shared norms: `average` as every other weight,
    `first` the first source layer's, `unit` a norm that scales by 1 (the paper's "zero"
    for Gemma's (1 + w) norms)."""
    text = copy.deepcopy(base.config)
    family = family_of(text)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if lora_init not in LORA_INITS:
        raise ValueError(f"lora_init must be one of {LORA_INITS}, got {lora_init!r}")
    if lora_alpha is not None and not (math.isfinite(lora_alpha) and lora_alpha > 0):
        raise ValueError(f"lora_alpha must be a finite number > 0, got {lora_alpha}")
    if stepwise_rule not in STEPWISE_RULES:
        raise ValueError(f"stepwise_rule must be one of {STEPWISE_RULES}, got {stepwise_rule!r}")
    if stepwise_rule != "ends" and init != "stepwise":
        raise ValueError(f"stepwise_rule {stepwise_rule!r} needs init stepwise, not {init!r}")
    if norm_init not in NORM_INITS:
        raise ValueError(f"norm_init must be one of {NORM_INITS}, got {norm_init!r}")
    if norm_init != "average" and (init != "average" or per_depth_norms):
        raise ValueError(f"norm_init {norm_init!r} needs init average and shared norms (not per-depth norms)")
    rank = parse_rank(rank)
    layer_map = depth_to_slot(text.num_hidden_layers, loops, sharing)
    caps = rank_caps(text)
    config = RecursiveConfig(
        text_config=text, num_loops=loops, sharing=sharing, layer_map=layer_map, init=init,
        init_sources=init_sources(layer_map, init, seed, sharing=sharing, stepwise_rule=stepwise_rule),
        stepwise_rule=stepwise_rule, norm_init=norm_init,
        lora_rank_attn=recorded_rank(parse_rank(rank_attn) if rank_attn is not None else rank, caps.get("attn", {})),
        lora_rank_mlp=recorded_rank(parse_rank(rank_mlp) if rank_mlp is not None else rank, caps.get("mlp", {})),
        lora_init=lora_init, lora_alpha=lora_alpha, per_depth_norms=per_depth_norms, seed=seed,
    )
    dtype = base.get_input_embeddings().weight.dtype
    torch.manual_seed(seed)
    if init == "scratch":
        # The from-scratch control: random weights everywhere, and standard LoRA (A random,
        # B zero: no original weights to take an SVD of), as `_init_weights` does.
        return RecursiveForCausalLM(config).to(dtype)
    if init == "scratch-layers":
        # Random shared layers (and standard LoRA, as `scratch`); the embeddings, final
        # norm and LM head are the base model's, loaded below.
        model = RecursiveForCausalLM(config).to(dtype)
    else:
        # Every tensor is overwritten below: skip the random init (most of a conversion's
        # time otherwise). It also skips tying, which init_weights does after initialising.
        with no_init_weights():
            model = RecursiveForCausalLM(config).to(dtype)
        model.tie_weights()
    torch.manual_seed(seed)  # the LoRA's random draws, however the model was built

    originals = base.get_submodule(family.layers_path)
    layers_prefix = family.layers_path + "."
    # Embeddings, final norm, LM head: as in the base model.
    outer = {k: v for k, v in base.state_dict().items() if not k.startswith(layers_prefix)}
    missing, unexpected = model.base.load_state_dict(outer, strict=False)
    stray = [k for k in missing if not k.startswith(layers_prefix)] + list(unexpected)
    if stray:
        raise RuntimeError(f"state dicts of base and recursive model disagree outside the layers: {stray[:5]}")
    if init == "scratch-layers":
        return model

    # Shared slots: the mean of their source layers (a single layer unless `average`).
    for block, sources in zip(model.recursive_block, config.init_sources):
        source_sds = [originals[i].state_dict() for i in sources]
        for name, tensor in block.state_dict().items():
            if len(source_sds) == 1:
                tensor.copy_(source_sds[0][name])
            else:
                tensor.copy_(torch.stack([sd[name].float() for sd in source_sds]).mean(0))
        if norm_init != "average" and len(sources) > 1:  # a shared slot (middle's own first/last are not)
            for path, norm in block.named_modules():
                if not is_norm(norm):
                    continue
                for name, tensor in norm.named_parameters(recurse=False):
                    if norm_init == "first":
                        tensor.copy_(originals[sources[0]].get_submodule(path).get_parameter(name))
                    else:  # unit: scale by 1, no shift
                        tensor.fill_(1.0 - family.norm_weight_offset if name == "weight" else 0.0)

    # Each depth: its own norms and biases.
    for layer in model.depth_layers:
        original = originals[layer.depth]
        for key, norm in layer.norms.items():
            norm.load_state_dict(original.get_submodule(key.replace("__", ".")).state_dict())
        for key, own in layer.linears.items():
            if own.bias is not None:
                own.bias.copy_(original.get_submodule(key.replace("__", ".")).bias)

    # Each depth's LoRA: truncated SVD of (W_depth - W_shared), one batched SVD over the
    # depths of a slot; or, with lora_init="zero", standard LoRA (A random, B zero).
    for slot, block in enumerate(model.recursive_block):
        layers = [layer for layer in model.depth_layers if layer.slot == slot]
        for key in layers[0].linears:
            owns = [layer.linears[key] for layer in layers]
            if owns[0].rank == 0:
                continue
            if lora_init == "zero":
                for own in owns:
                    own.reset_lora()
                continue
            path = key.replace("__", ".")
            shared = block.get_submodule(path).weight.float()
            residuals = torch.stack([originals[layer.depth].get_submodule(path).weight.float() - shared
                                     for layer in layers])
            us, vh, _ = truncated_svd(residuals, owns[0].rank)
            for own, b, a in zip(owns, us, vh):
                own.set_factors(b, a)
    return model

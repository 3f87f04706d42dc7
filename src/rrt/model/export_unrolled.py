"""Unrolled export: a recursive model written as a plain checkpoint of its base family
(Llama, Gemma 1/2/3, GPT-NeoX), which any tool that knows the family loads (lm-eval's
command line, vLLM, llama.cpp's conversion) with no custom code.

Depth l of the L-depth model becomes layer l: the weights of its shared slot, plus its own
LoRA merged in (W + scale * B @ A), its own biases and norms where it has them. The
embeddings, final norm and LM head are copied; Gemma 2/3's per-depth attention types come
with the base config (`text_config`), which already describes the L unrolled depths. The
function is the recursive model's (equal up to float rounding); the parameter saving is
gone: L layers are stored, not K. Early exits need no parameters, so nothing is dropped;
reading them out (rrt's `--exits`) works on the recursive directory only, since the plain
model no longer says where its loops end.
"""
from __future__ import annotations

import copy

import torch
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from .families import family_of


def is_recursive(model) -> bool:
    return getattr(model.config, "model_type", None) == "recursive"


@torch.no_grad()
def depth_state_dict(layer) -> dict[str, torch.Tensor]:
    """One depth (a `DepthLayer`) as the state dict of a plain decoder layer of its family."""
    state = {k: v.detach().clone() for k, v in layer.block.state_dict().items()}
    for key, own in layer.linears.items():
        path = key.replace("__", ".")
        if own.rank > 0:
            shared = state[f"{path}.weight"]
            delta = (own.lora_B.float() @ own.lora_A.float()) * own.scale
            state[f"{path}.weight"] = (shared.float() + delta).to(shared.dtype)
        if own.bias is not None:
            state[f"{path}.bias"] = own.bias.detach().clone()
    for key, norm in layer.norms.items():
        path = key.replace("__", ".")
        state.update({f"{path}.{name}": t.detach().clone() for name, t in norm.state_dict().items()})
    return state


@torch.no_grad()
def unroll(model) -> PreTrainedModel:
    """The base-family CausalLM with one layer per depth of the recursive `model`."""
    if not is_recursive(model):
        raise ValueError(f"not a recursive model (model_type {getattr(model.config, 'model_type', None)!r})")
    text = copy.deepcopy(model.config.text_config)
    family = family_of(text)
    dtype = model.get_input_embeddings().weight.dtype
    with no_init_weights():
        plain = family.causal_lm_cls(text)(text).to(dtype)
    prefix = family.layers_path + "."
    state = {k: v for k, v in model.base.state_dict().items() if not k.startswith(prefix)}
    for layer in model.depth_layers:
        state.update({f"{prefix}{layer.depth}.{k}": v for k, v in depth_state_dict(layer).items()})
    expected = plain.state_dict().keys()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise RuntimeError(f"unrolled state dict does not fit {type(plain).__name__}: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    plain.load_state_dict(state, strict=True)
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()

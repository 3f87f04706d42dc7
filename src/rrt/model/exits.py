"""Early exit (paper Sec. 5): the output of every loop read out as a prediction.

A model of L depths looped B times has B exits, after depths L/B - 1, 2L/B - 1, ..., L - 1
(the end of each loop; with `sequence` sharing, after every L/B depths). An exit adds no
parameter: its hidden state goes through the model's own final norm, LM head and final
logit transform (Gemma 2/3 soft-capping), exactly as the last depth's does, so the last
exit's logits are the model's logits. Training (`rrt.train.early_exit`), evaluation and
serving all read exits through `exit_hidden_states` and `exit_logits`. A plain (not
recursive) model has one exit, its output.
"""
from __future__ import annotations

import contextlib

import torch

from .families import family_of


def _backbone(model):
    """The family's CausalLM: the recursive wrapper's `base`, or the model itself."""
    return getattr(model, "base", model) if getattr(model.config, "model_type", None) == "recursive" else model


def _text_config(model):
    return model.config.get_text_config(decoder=True)


@contextlib.contextmanager
def starved_head(model, captured: list | None = None):
    """While active, the LM head receives an empty slice of its input (the model's forward
    runs unchanged up to it, then projects zero positions, so no logits are made); the
    head's real input is appended to `captured` when given."""
    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["input"]
        if captured is not None:
            captured.append(hidden)
        empty = hidden[..., :0, :]
        return ((empty,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "input": empty})

    handle = model.get_output_embeddings().register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def exit_depths(model) -> list[int]:
    """The depth after which each loop's exit reads the hidden state (0-based)."""
    depths = _text_config(model).num_hidden_layers
    loops = getattr(model.config, "num_loops", 1) if getattr(model.config, "model_type", None) == "recursive" else 1
    return [(b + 1) * depths // loops - 1 for b in range(loops)]


def exit_hidden_states(model, input_ids, attention_mask=None) -> list[torch.Tensor]:
    """Hidden states (before the final norm) after each exit depth, in loop order, from one
    forward pass: forward hooks on the exit depths' decoder layers record their outputs,
    and a pre-hook hands the LM head an empty slice, so no full-vocabulary logits are made."""
    backbone = _backbone(model)
    layers = backbone.get_submodule(family_of(_text_config(model)).layers_path)
    captured: dict[int, torch.Tensor] = {}

    def record(depth):
        def hook(module, args, output):
            captured[depth] = output[0] if isinstance(output, tuple) else output
        return hook

    depths = exit_depths(model)
    handles = [layers[d].register_forward_hook(record(d)) for d in depths]
    try:
        with starved_head(model):
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [captured[d] for d in depths]


def logit_transform(model):
    """What the family's CausalLM does to the head's output: Gemma 2/3's final-logit
    soft-capping (cap * tanh(logits / cap)), as transformers writes it; else nothing."""
    config = _text_config(model)
    for name in ("logit_scale", "logits_scaling"):  # Cohere, Granite: not supported families
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise NotImplementedError(f"{type(model).__name__}: {name} is not handled")
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is None:
        return lambda logits: logits
    return lambda logits: torch.tanh(logits / cap) * cap


def exit_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """An exit's logits: the final norm, the LM head and the logit transform of the model."""
    norm = _backbone(model).get_submodule(family_of(_text_config(model)).norm_path)
    return logit_transform(model)(model.get_output_embeddings()(norm(hidden)))

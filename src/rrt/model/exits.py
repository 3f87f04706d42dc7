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

from ..settings import EXIT_CRITERIA
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


@contextlib.contextmanager
def _recorded_exits(model, captured: dict):
    """While active, every forward pass stores each exit depth's output in `captured`
    (depth -> hidden state before the final norm); yields the exit depths."""
    layers = _backbone(model).get_submodule(family_of(_text_config(model)).layers_path)

    def record(depth):
        def hook(module, args, output):
            captured[depth] = output[0] if isinstance(output, tuple) else output
        return hook

    depths = exit_depths(model)
    handles = [layers[d].register_forward_hook(record(d)) for d in depths]
    try:
        yield depths
    finally:
        for h in handles:
            h.remove()


def exit_hidden_states(model, input_ids, attention_mask=None) -> list[torch.Tensor]:
    """Hidden states (before the final norm) after each exit depth, in loop order, from one
    forward pass: forward hooks on the exit depths' decoder layers record their outputs,
    and a pre-hook hands the LM head an empty slice, so no full-vocabulary logits are made."""
    captured: dict[int, torch.Tensor] = {}
    with _recorded_exits(model, captured) as depths, starved_head(model):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return [captured[d] for d in depths]


@contextlib.contextmanager
def exit_readout(model, choose):
    """While active, the model's logits are read out at exits other than the last:
    `choose(hidden_states)` gets every exit's (batch, seq, d) hidden state of the forward
    pass and returns the one the final norm and LM head see (e.g. `hidden_states[b]`, or
    each position's own exit). Norm, head and logit transform act position by position, so
    this is the same as taking each position's logits from its exit. Any caller of the
    model (lm-eval included) then sees those logits."""
    captured: dict[int, torch.Tensor] = {}
    norm = _backbone(model).get_submodule(family_of(_text_config(model)).norm_path)

    choosing = []  # non-empty while `choose` runs: its own exit_logits calls pass the norm as is

    def substitute(module, args, kwargs):
        if choosing:
            return None
        choosing.append(True)
        try:
            chosen = choose([captured[d] for d in depths])
        finally:
            choosing.clear()
        return ((chosen,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "input": chosen})

    with _recorded_exits(model, captured) as depths:
        handle = norm.register_forward_pre_hook(substitute, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


def exit_confidence(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """Per position, how sure an exit is: its largest softmax probability (`max_prob`,
    higher is surer) or the entropy of its distribution in nats (`entropy`, lower is surer)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    if criterion == "max_prob":
        return logp.max(-1).values.exp()
    if criterion == "entropy":
        return -(logp.exp() * logp).sum(-1)
    raise ValueError(f"unknown exit criterion {criterion!r}; known: {', '.join(EXIT_CRITERIA)}")


def is_confident(confidence: torch.Tensor, criterion: str, threshold: float) -> torch.Tensor:
    """Whether an exit's `exit_confidence` lets a token leave: max_prob >= t, entropy <= t."""
    return confidence >= threshold if criterion == "max_prob" else confidence <= threshold


def exits_taken(confidences: list[torch.Tensor], criterion: str, threshold: float) -> torch.Tensor:
    """Per position, the (0-based) exit a confidence rule leaves at, from every exit's
    `exit_confidence`: the first intermediate exit whose confidence reaches `threshold`
    (max_prob >= t, entropy <= t), else the last one (whose confidence is not read)."""
    last = len(confidences) - 1
    taken = torch.full(confidences[-1].shape, last, dtype=torch.long, device=confidences[-1].device)
    for b in reversed(range(last)):
        sure = is_confident(confidences[b], criterion, threshold)
        taken = torch.where(sure, torch.full_like(taken, b), taken)
    return taken


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


def exit_head_input(model, hidden: torch.Tensor) -> torch.Tensor:
    """What the LM head reads at an exit: its hidden state through the model's final norm."""
    return _backbone(model).get_submodule(family_of(_text_config(model)).norm_path)(hidden)


def exit_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """An exit's logits: the final norm, the LM head and the logit transform of the model."""
    return logit_transform(model)(model.get_output_embeddings()(exit_head_input(model, hidden)))


def read_at_exit(b: int):
    """An `exit_readout` choice: every position reads exit b (0-based)."""
    return lambda hidden_states: hidden_states[b]


def read_when_confident(model, criterion: str, threshold: float):
    """An `exit_readout` choice: each position reads the exit `exits_taken` picks for it,
    from every exit's own logits."""
    def choose(hidden_states):
        confidences = [exit_confidence(exit_logits(model, h), criterion) for h in hidden_states]
        taken = exits_taken(confidences, criterion, threshold)
        chosen = hidden_states[-1]
        for b in reversed(range(len(hidden_states) - 1)):
            chosen = torch.where((taken == b)[..., None], hidden_states[b], chosen)
        return chosen
    return choose

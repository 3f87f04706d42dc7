"""The early-exit loss (paper Sec. 5): every loop's exit learns to predict the next token.

    loss = sum_b w_b * CE(exit b)  +  sum_{b < B} w_b * kd_weight * KD(exit b || final exit, detached)

The paper's best recipe for Gemma B=2 is post-training with "aggressive" weights, 0.1 for the
intermediate exit and 1.0 for the final one, plus KD from the detached final-loop output
(final 52.6 / intermediate 48.0 accuracy); it gives other schedules (0.3, 0.1, 0.05, 0.01)
as ablations. It does not say how the KD term is weighted: here each intermediate exit's KD
is scaled by that exit's own weight (so weight 0 switches an exit off entirely) times
`kd_weight`. The final distribution is detached: KD pulls intermediate exits towards the
final one and never the final one towards them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.exits import (
    exit_head_input,
    exit_hidden_states,
    exit_logits,
    logit_transform,
)
from ..settings import EXIT_KD_WEIGHT, EXIT_SCHEDULES
from .kd import kd_loss
from .losses import chunked_losses

AGGRESSIVE = (0.1, 1.0)  # the paper's best weights for B=2: intermediate, final


def exit_weights(weights, loops: int) -> list[float]:
    """One weight per exit. A list of B numbers as given; a single number w means w for
    every intermediate exit and 1.0 for the final one; or a schedule name: `aggressive`
    (0.1 for every intermediate exit), `uniform` (1.0 for all), `linear` (b/B)."""
    if isinstance(weights, str):
        schedules = {"aggressive": [AGGRESSIVE[0]] * (loops - 1) + [AGGRESSIVE[1]],
                     "uniform": [1.0] * loops, "linear": [(b + 1) / loops for b in range(loops)]}
        assert set(schedules) == set(EXIT_SCHEDULES)
        if weights not in schedules:
            raise ValueError(f"unknown exit-weight schedule {weights!r}; known: {', '.join(EXIT_SCHEDULES)}")
        weights = schedules[weights]
    if isinstance(weights, (int, float)):
        weights = [float(weights)] * (loops - 1) + [1.0]
    weights = [float(w) for w in weights]
    if len(weights) != loops:
        raise ValueError(f"{len(weights)} exit weights for a model with {loops} loops")
    if any(not w >= 0 for w in weights) or weights[-1] <= 0:
        raise ValueError(f"exit weights must be >= 0 with the final one > 0, got {weights}")
    return weights


def exit_losses(logits: list[torch.Tensor], labels: torch.Tensor, weights, *, kd_weight: float = EXIT_KD_WEIGHT,
                kd_kind: str = "fkl", kd_temperature: float = 1.0):
    """(total, per-exit CE list, per-exit KD list) from each exit's (batch, seq, vocab)
    logits: position i predicts labels[i + 1]; labels -100 are ignored."""
    weights = exit_weights(weights, len(logits))
    targets = labels[:, 1:]
    mask = targets != -100
    final = logits[-1][:, :-1].detach()
    ces, kds, total = [], [], 0.0
    for b, (z, w) in enumerate(zip(logits, weights)):
        ce = F.cross_entropy(z[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        ces.append(ce)
        total = total + w * ce
        if b < len(logits) - 1:
            kd = kd_loss(z[:, :-1], final, kd_kind, kd_temperature, mask=mask)
            kds.append(kd)
            total = total + w * kd_weight * kd
    return total, ces, kds


def early_exit_losses(model, input_ids, attention_mask=None, labels=None, *, weights=AGGRESSIVE,
                      kd_weight: float = EXIT_KD_WEIGHT, kd_kind: str = "fkl", kd_temperature: float = 1.0,
                      chunk_tokens: int | None = None):
    """`exit_losses` of a model on one micro-batch (one forward pass, every exit). With
    `chunk_tokens`, no exit's full logits are made: each exit's head runs that many
    positions at a time (`losses.chunked_losses`), the final exit's detached head input
    standing in as the KD teacher's. Same numbers up to summation order."""
    labels = input_ids if labels is None else labels
    hidden = exit_hidden_states(model, input_ids, attention_mask)
    if not chunk_tokens:
        logits = [exit_logits(model, h) for h in hidden]
        return exit_losses(logits, labels, weights, kd_weight=kd_weight, kd_kind=kd_kind,
                           kd_temperature=kd_temperature)
    weights = exit_weights(weights, len(hidden))
    head, transform = model.get_output_embeddings(), logit_transform(model)
    inputs = [exit_head_input(model, h)[:, :-1] for h in hidden]  # position i predicts token i+1
    final = inputs[-1].detach()
    ces, kds, total = [], [], 0.0
    for b, (x, w) in enumerate(zip(inputs, weights)):
        intermediate = b < len(inputs) - 1
        ce, kd = chunked_losses(x, labels[:, 1:], head, transform, chunk_tokens, final if intermediate else None,
                                head, transform, kd_kind, kd_temperature)
        ces.append(ce)
        total = total + w * ce
        if intermediate:
            kds.append(kd)
            total = total + w * kd_weight * kd
    return total, ces, kds

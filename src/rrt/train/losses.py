"""The uptraining loss of one micro-batch: next-token cross-entropy and, with a teacher,
the KD divergence over the same positions, either from the model's full logits or, for
large vocabularies, chunk by chunk from the final hidden states so that the
(tokens x vocab) logits are never materialised (`loss_chunk_tokens`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from ..model.exits import logit_transform, starved_head
from .kd import divergence_sum, kd_loss


def final_hidden_states(model, input_ids, attention_mask=None) -> torch.Tensor:
    """The hidden states the model's LM head would see (after the final norm), without
    computing any logits.

    How: `starved_head` (a forward pre-hook on `model.get_output_embeddings()`) captures the
    head's input and hands the head an empty slice of it, so the model's own forward runs
    unchanged up to the head and then projects zero positions. This is chosen over calling the backbone
    (`get_decoder()`) because it needs no knowledge of the family: whatever the CausalLM does
    between its backbone and its head (final norm inside or outside the backbone, slicing,
    the recursive wrapper's `base`, GPT-NeoX's differently named head) happens as usual, and
    the captured tensor is by construction the head's input. What happens *after* the head
    (soft-capping) is `rrt.model.exits.logit_transform`'s job."""
    with starved_head(model, []) as captured:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    if len(captured) != 1:
        raise RuntimeError(f"{type(model).__name__}: its output embedding ran {len(captured)} times in one forward, "
                           "expected once")
    return captured[0]


def _chunk_losses(hidden, targets, teacher_hidden, head, transform, teacher_head, teacher_transform, kind,
                  temperature):
    """Summed CE (and KD) of one chunk of tokens; its logits exist only inside this call."""
    logits = transform(head(hidden))
    ce = F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
    if teacher_hidden is None:
        return ce, ce.new_zeros(())
    with torch.no_grad():
        teacher_logits = teacher_transform(teacher_head(teacher_hidden))
    return ce, divergence_sum(logits, teacher_logits, kind, temperature)


def lm_losses(model, input_ids, attention_mask=None, labels=None, *, teacher=None, kd_kind="fkl",
              kd_temperature=1.0, chunk_tokens: int | None = None):
    """(CE, KD or None) of next-token prediction: CE the token mean over labels != -100 (as
    the model's own loss), KD `kd_loss` over the same positions against a frozen teacher.

    chunk_tokens None: the model's forward with full logits. Otherwise the logits are never
    materialised: the final hidden states (`final_hidden_states`) go through the LM head
    `chunk_tokens` predicted positions at a time, each chunk under activation checkpointing,
    so one chunk's (tokens x vocab) logits, and the teacher's, exist at a time in the forward
    pass and again in the backward pass. Same numbers up to summation order."""
    labels = input_ids if labels is None else labels
    if not chunk_tokens:
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False)
        if teacher is None:
            return out.loss, None
        with torch.no_grad():
            teacher_logits = teacher(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        # Position i predicts token i+1: the last position predicts nothing.
        kd = kd_loss(out.logits[:, :-1], teacher_logits[:, :-1], kd_kind, kd_temperature, mask=labels[:, 1:] != -100)
        return out.loss, kd

    if chunk_tokens < 1:
        raise ValueError(f"loss_chunk_tokens must be >= 1, got {chunk_tokens}")
    hidden = final_hidden_states(model, input_ids, attention_mask)
    teacher_hidden = teacher_head = teacher_transform = None
    if teacher is not None:
        with torch.no_grad():
            teacher_hidden = final_hidden_states(teacher, input_ids, attention_mask)[:, :-1]
        teacher_head, teacher_transform = teacher.get_output_embeddings(), logit_transform(teacher)
    ce, kd = chunked_losses(hidden[:, :-1], labels[:, 1:], model.get_output_embeddings(), logit_transform(model),
                            chunk_tokens, teacher_hidden, teacher_head, teacher_transform, kd_kind, kd_temperature)
    return ce, (None if teacher is None else kd)


def chunked_losses(hidden, targets, head, transform, chunk_tokens: int, teacher_hidden=None, teacher_head=None,
                   teacher_transform=None, kd_kind="fkl", kd_temperature=1.0):
    """(CE, KD) token means over targets != -100 of head inputs `hidden` (batch, n, d)
    predicting `targets` (batch, n), `chunk_tokens` positions at a time, each chunk under
    activation checkpointing; KD against the teacher's head inputs at the same positions,
    which get no gradient (0 without a teacher)."""
    width = hidden.shape[-1]
    hidden, targets = hidden.reshape(-1, width), targets.reshape(-1)
    if teacher_hidden is not None:
        teacher_hidden = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
    keep = targets != -100
    count = max(int(keep.sum()), 1)
    ce = kd = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        chunk_keep = keep[rows]
        if not chunk_keep.any():
            continue
        h, y = hidden[rows], targets[rows]
        th = None if teacher_hidden is None else teacher_hidden[rows]
        if not chunk_keep.all():  # KD ignores unlabelled positions; CE would ignore them anyway
            h, y, th = h[chunk_keep], y[chunk_keep], None if th is None else th[chunk_keep]
        args = (h, y, th, head, transform, teacher_head, teacher_transform, kd_kind, kd_temperature)
        if torch.is_grad_enabled() and h.requires_grad:
            ce_sum, kd_sum = torch.utils.checkpoint.checkpoint(_chunk_losses, *args, use_reentrant=False)
        else:
            ce_sum, kd_sum = _chunk_losses(*args)
        ce, kd = ce + ce_sum, kd + kd_sum
    return ce / count, kd / count

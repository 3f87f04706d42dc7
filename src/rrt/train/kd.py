"""Knowledge-distillation losses between student and teacher next-token distributions.

The paper (Sec. 3, KD ablation) distils the recursive student from the full-size model
with forward KL and compares reverse KL, Jensen-Shannon and total variation distance.
With p_t = softmax(teacher / tau) and p_s = softmax(student / tau), per predicted token:

    fkl  KL(p_t || p_s)                           (the paper's default; mean-seeking)
    rkl  KL(p_s || p_t)                           (mode-seeking)
    jsd  (KL(p_s || m) + KL(p_t || m)) / 2,  m = (p_s + p_t) / 2
    tvd  sum |p_s - p_t| / 2

Temperature: both distributions are softened by tau. The KL-type losses (fkl, rkl, jsd)
are multiplied by tau^2 (Hinton et al. 2015): their gradients shrink like 1/tau^2, so the
factor keeps the loss on the same scale as cross-entropy whatever tau is. TVD is a bounded
distance in [0, 1] and is left unscaled.

All math is fp32 whatever the logits' dtype, through log_softmax / logaddexp. Vocabularies
are large (49,152 for SmolLM2, 256K for Gemma), so the tokens are processed in chunks of
about CHUNK_ELEMENTS logits, each under activation checkpointing: the fp32 temporaries of
one chunk exist at a time, in the forward pass and again in the backward pass, instead of
several fp32 copies of the whole (tokens x vocab) logits. (With `loss_chunk_tokens` the
trainer goes further and never materialises the logits themselves: see
`rrt.train.trainer.lm_losses`, which sums `divergence_sum` over its own chunks.)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..settings import KD_KINDS as KINDS

KL_TYPE = ("fkl", "rkl", "jsd")  # scaled by tau^2
CHUNK_ELEMENTS = 1 << 24  # logits per chunk: 64 MB per fp32 temporary

_NEG = torch.finfo(torch.float32).min  # stands in for log(0) so that 0 * log(0) stays 0


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 log-probabilities at `temperature`; -inf logits (masked vocab entries) become a
    huge finite negative so that p * log p is 0 rather than NaN."""
    return F.log_softmax(logits.float() / temperature, dim=-1).clamp(min=_NEG)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "fkl",
               temperature: float = 1.0) -> torch.Tensor:
    """Divergence per position (the logits' shape without the vocab axis), fp32, including
    the tau^2 factor of the KL-type losses. Not chunked: use `kd_loss` for training."""
    log_s = _log_probs(student_logits, temperature)
    log_t = _log_probs(teacher_logits, temperature)
    if kind == "fkl":
        value = _kl(log_t, log_s)
    elif kind == "rkl":
        value = _kl(log_s, log_t)
    elif kind == "jsd":
        log_m = torch.logaddexp(log_s, log_t) - math.log(2.0)
        value = 0.5 * (_kl(log_s, log_m) + _kl(log_t, log_m))
    elif kind == "tvd":
        return 0.5 * (log_s.exp() - log_t.exp()).abs().sum(-1)
    else:
        raise ValueError(f"kd loss must be one of {', '.join(KINDS)}, got {kind!r}")
    return value * temperature**2


def divergence_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "fkl",
                   temperature: float = 1.0) -> torch.Tensor:
    """`divergence` summed over all positions (an fp32 scalar). Not chunked: one chunk of
    `kd_loss`, and of the chunked LM-head loss in `rrt.train.trainer`, which computes the
    logits chunk by chunk itself."""
    return divergence(student_logits, teacher_logits, kind, temperature).sum()


def _check(student_logits, teacher_logits, kind, temperature, mask) -> None:
    if kind not in KINDS:
        raise ValueError(f"kd loss must be one of {', '.join(KINDS)}, got {kind!r}")
    if not temperature > 0:
        raise ValueError(f"kd temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ (same tokenizer/vocab needed)")
    if mask is not None and mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match logits {tuple(student_logits.shape[:-1])}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "fkl",
            temperature: float = 1.0, mask: torch.Tensor | None = None,
            chunk_tokens: int | None = None) -> torch.Tensor:
    """Mean divergence over the predicted positions (those where `mask` is true; all if None).

    Logits are (..., vocab) and must be aligned position by position; for next-token
    prediction pass `logits[:, :-1]` of both models and the mask of the labels they predict.
    The result is an fp32 scalar (0 when no position is masked in). `chunk_tokens` overrides
    the chunk size (default: about CHUNK_ELEMENTS logits per chunk)."""
    _check(student_logits, teacher_logits, kind, temperature, mask)
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)
    teacher = teacher_logits.detach().reshape(-1, vocab)
    keep = None if mask is None else mask.reshape(-1).bool()
    count = student.shape[0] if keep is None else int(keep.sum())
    chunk = chunk_tokens or max(1, CHUNK_ELEMENTS // vocab)
    total = student.new_zeros((), dtype=torch.float32)
    for start in range(0, student.shape[0], chunk):
        s, t = student[start:start + chunk], teacher[start:start + chunk]
        if keep is not None:
            rows = keep[start:start + chunk]
            if not rows.any():
                continue
            if not rows.all():
                s, t = s[rows], t[rows]
        if s.requires_grad:  # recompute this chunk's fp32 temporaries in backward
            total = total + checkpoint(divergence_sum, s, t, kind, temperature, use_reentrant=False)
        else:
            total = total + divergence_sum(s, t, kind, temperature)
    return total / max(count, 1)

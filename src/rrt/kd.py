"""Knowledge distillation losses between student and teacher next-token distributions
(paper Sec. 3: forward KL by default; reverse KL, JSD and TVD compared in its Table)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("fkl", "rkl", "jsd", "tvd")


def per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "fkl",
              temperature: float = 1.0) -> torch.Tensor:
    """Divergence per position (shape of the logits without the vocab axis), in fp32.
    KL-type losses are multiplied by temperature^2 so gradients keep their scale when
    the distributions are softened (Hinton et al.); TVD is bounded and is not."""
    if kind not in KINDS:
        raise ValueError(f"kd loss must be one of {KINDS}, got {kind!r}")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "fkl":  # KL(teacher || student)
        value = (log_t.exp() * (log_t - log_s)).sum(-1)
    elif kind == "rkl":  # KL(student || teacher)
        value = (log_s.exp() * (log_s - log_t)).sum(-1)
    elif kind == "jsd":  # mixture 1/2
        log_m = torch.logsumexp(torch.stack([log_s, log_t]), dim=0) - torch.log(torch.tensor(2.0))
        value = 0.5 * ((log_s.exp() * (log_s - log_m)).sum(-1) + (log_t.exp() * (log_t - log_m)).sum(-1))
    else:  # total variation distance
        return 0.5 * (log_s.exp() - log_t.exp()).abs().sum(-1)
    return value * temperature**2


def kd_loss(student_logits, teacher_logits, kind: str = "fkl", temperature: float = 1.0, mask=None) -> torch.Tensor:
    """Mean of `per_token` over the positions where mask is true (all if None)."""
    values = per_token(student_logits, teacher_logits, kind, temperature)
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)

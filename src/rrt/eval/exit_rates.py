"""How often a token could leave the loop early (paper Sec. 5 and Table K.1's simulation).

The oracle exit rate of exit b is the fraction of predicted tokens whose argmax at exit b
equals the argmax at the final exit: the tokens an oracle could exit there without
changing the greedy output. A token counts at its earliest such exit."""
from __future__ import annotations

import torch


@torch.no_grad()
def oracle_exit_counts(logits: list[torch.Tensor], mask: torch.Tensor | None = None) -> dict:
    """From each exit's (..., vocab) logits over the same positions: per exit, how many
    positions agree with the final argmax there ("agree") and how many would exit there
    first ("first"); "positions" counted (`mask` true, all if None)."""
    final = logits[-1].argmax(-1)
    keep = torch.ones_like(final, dtype=torch.bool) if mask is None else mask.bool()
    pending = keep.clone()
    agree, first = [], []
    for z in logits:
        same = (z.argmax(-1) == final) & keep
        agree.append(int(same.sum()))
        first.append(int((same & pending).sum()))
        pending &= ~same
    return {"positions": int(keep.sum()), "agree": agree, "first": first}


def add_oracle_counts(total: dict | None, counts: dict) -> dict:
    """The sum of two `oracle_exit_counts` (total None: counts)."""
    if total is None:
        return counts
    return {"positions": total["positions"] + counts["positions"],
            **{k: [a + b for a, b in zip(total[k], counts[k])] for k in ("agree", "first")}}


def oracle_exit_rates(counts: dict) -> dict:
    """Fractions of `oracle_exit_counts`: per-exit agreement and the exit distribution
    (fractions exiting first at each exit; they sum to 1), and the mean loops per token."""
    n = max(counts["positions"], 1)
    first = [c / n for c in counts["first"]]
    return {"agree": [c / n for c in counts["agree"]], "exit_at": first,
            "mean_loops": sum((b + 1) * f for b, f in enumerate(first))}

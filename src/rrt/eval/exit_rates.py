"""How often a token could leave the loop early, and what it costs (paper Sec. 5).

Two exit rules over the same tokens:
- the oracle the paper simulates throughput with (Table K.1): a token leaves at the first
  exit whose argmax equals the final exit's argmax, so the greedy output never changes;
- a confidence threshold (`rrt.model.exits.exits_taken`): a token leaves at the first
  intermediate exit whose max probability reaches t (or whose entropy falls to t), and its
  prediction there is the one used: the perplexity and next-token accuracy at each
  threshold are those of the exited predictions.
Every later position still sees full-depth hidden states: this is the paper's simulation
of early exit, not a served one (the serving engine's exited tokens leave deeper KV slots
to be filled otherwise).
"""
from __future__ import annotations

import math

import torch

from ..model.exits import exit_confidence, exits_taken


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


class ExitTally:
    """Sums over predicted tokens, batch by batch, for every exit and every threshold:
    NLL and top-1 hits per exit, the oracle counts, and per (criterion, threshold) the NLL
    and hits of the exited predictions, their agreement with the final argmax and where
    tokens left. `thresholds`: {criterion: [t, ...]}."""

    def __init__(self, thresholds: dict[str, list[float]] | None = None):
        self.thresholds = {c: [float(t) for t in ts] for c, ts in (thresholds or {}).items()}
        self.tokens, self.oracle = 0, None
        self.nll: list[float] = []
        self.hits: list[int] = []
        self.at_threshold = {(c, t): {"nll": 0.0, "hits": 0, "agree": 0, "first": None}
                             for c, ts in self.thresholds.items() for t in ts}

    @torch.no_grad()
    def add(self, logits: list[torch.Tensor], targets: torch.Tensor) -> None:
        """Each exit's (n, vocab) logits predicting the n `targets`."""
        logp = [torch.log_softmax(z.float(), dim=-1) for z in logits]
        nll = [-lp.gather(-1, targets[:, None])[:, 0] for lp in logp]
        pred = [lp.argmax(-1) for lp in logp]
        hit = [p == targets for p in pred]
        if not self.nll:
            self.nll, self.hits = [0.0] * len(logits), [0] * len(logits)
        for b in range(len(logits)):
            self.nll[b] += float(nll[b].sum())
            self.hits[b] += int(hit[b].sum())
        self.oracle = add_oracle_counts(self.oracle, oracle_exit_counts(logp))
        self.tokens += targets.numel()
        for criterion in self.thresholds:
            confidences = [exit_confidence(z, criterion) for z in logp]
            for t in self.thresholds[criterion]:
                taken = exits_taken(confidences, criterion, t)[:, None]
                pick = lambda per_exit: torch.stack(per_exit, -1).gather(-1, taken)[:, 0]  # noqa: E731
                sums = self.at_threshold[(criterion, t)]
                sums["nll"] += float(pick(nll).sum())
                sums["hits"] += int(pick(hit).sum())
                sums["agree"] += int((pick(pred) == pred[-1]).sum())
                counts = torch.bincount(taken[:, 0], minlength=len(logits)).tolist()
                sums["first"] = counts if sums["first"] is None else [a + b for a, b in zip(sums["first"], counts)]

    def result(self) -> dict:
        """{"tokens", "exits": [{"ppl", "nll", "acc"}], "oracle": `oracle_exit_rates`,
        "thresholds": {criterion: [{"threshold", "ppl", "nll", "acc", "agree", "exit_at",
        "exit_rate", "mean_loops"}]}}; acc is next-token top-1 accuracy, exit_rate the
        fraction of tokens leaving before the last exit."""
        n = max(self.tokens, 1)
        exits = [{"ppl": math.exp(s / n), "nll": s / n, "acc": h / n} for s, h in zip(self.nll, self.hits)]
        thresholds = {}
        for criterion, ts in self.thresholds.items():
            thresholds[criterion] = []
            for t in ts:
                sums = self.at_threshold[(criterion, t)]
                exit_at = [c / n for c in sums["first"] or [0] * len(self.nll)]
                thresholds[criterion].append({
                    "threshold": t, "ppl": math.exp(sums["nll"] / n), "nll": sums["nll"] / n,
                    "acc": sums["hits"] / n, "agree": sums["agree"] / n, "exit_at": exit_at,
                    "exit_rate": 1 - exit_at[-1] if exit_at else 0.0,
                    "mean_loops": sum((b + 1) * f for b, f in enumerate(exit_at))})
        return {"tokens": self.tokens, "exits": exits, "oracle": oracle_exit_rates(self.oracle),
                "thresholds": thresholds}

"""Relaxation (paper Sec. 2.2): a separate LoRA per depth on every linear of the shared
block, initialised by truncated SVD of the residual between the original layer and the
shared one.

The shared block's linears become `RelaxedLinear`s that hold the shared weight; each depth
owns a `DepthLinear` (its LoRA A/B and, with per-depth norms, its own bias) and binds it
before running the block. Norms become `DepthNorm`s that dispatch to the binding depth's
own copy of the family's norm module. Nothing W' + BA is ever materialised in forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resolve_rank(rank: int | str, in_features: int, out_features: int) -> int:
    """`full` means the smaller side of the matrix; a larger rank is capped to it
    (the paper's sizes assume the cap, e.g. Gemma's 256-wide K/V at r=512)."""
    cap = min(in_features, out_features)
    return cap if rank == "full" else min(int(rank), cap)


class DepthLinear(nn.Module):
    """What one depth adds to one shared linear: LoRA factors and, optionally, its own bias."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float, bias: bool):
        super().__init__()
        self.rank = rank
        self.scale = scale
        if rank > 0:
            self.lora_A = nn.Parameter(torch.zeros(rank, in_features))
            self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        else:
            self.register_parameter("lora_A", None)
            self.register_parameter("lora_B", None)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @torch.no_grad()
    def init_svd(self, residual: torch.Tensor) -> None:
        """Best rank-r approximation of `residual` (W_depth - W_shared), factorised in fp64
        (at least the fp32 the paper asks for) and stored in the parameter dtype:
        scale * B @ A == U_r S_r V_r^T exactly, so full rank restores W_depth."""
        if self.rank == 0:
            return
        u, s, vh = torch.linalg.svd(residual.detach().to(torch.float64), full_matrices=False)
        r = self.rank
        self.lora_B.copy_((u[:, :r] * s[:r]) / self.scale)
        self.lora_A.copy_(vh[:r])

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale}, bias={self.bias is not None}"


class RelaxedLinear(nn.Linear):
    """A linear of the shared block. Its weight (and bias, unless biases are per depth) is
    shared by every depth; the binding depth's `DepthLinear` adds B(Ax) and may swap the bias."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        # Not a submodule: the depth owns it; this is only who is running right now.
        self.__dict__["active"] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth: DepthLinear | None = self.__dict__["active"]
        if depth is None:
            return F.linear(x, self.weight, self.bias)
        bias = depth.bias if depth.bias is not None else self.bias
        y = F.linear(x, self.weight, bias)
        if depth.rank > 0:
            y = y + F.linear(F.linear(x, depth.lora_A), depth.lora_B) * depth.scale
        return y


class DepthNorm(nn.Module):
    """Placeholder for a norm of the shared block when every depth keeps its own norm."""

    def __init__(self):
        super().__init__()
        self.__dict__["active"] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.__dict__["active"]
        if norm is None:
            raise RuntimeError("DepthNorm called outside a depth: run the shared block through its DepthLayer")
        return norm(x)


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("Norm")

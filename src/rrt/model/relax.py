"""Relaxation (paper Sec. 2.2): a separate LoRA per depth on every linear of the shared
block, initialised by truncated SVD of the residual between the original layer and the
shared one.

The shared block's linears become `RelaxedLinear`s that hold the shared weight; each depth
owns a `DepthLinear` (its LoRA A/B and, with per-depth norms, its own bias). Norms become
`DepthNorm`s that dispatch to the depth's own copy of the family's norm module. Which depth
a placeholder serves is fixed in the depth's view of the shared block (`rrt.model.binding`),
never written at forward time. Nothing W' + BA is ever materialised in forward.
"""
from __future__ import annotations

import math
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

# Truncated SVD of the residuals, in fp32 (the paper's precision; fp64 at full rank). A
# randomised SVD (Halko, Martinsson & Tropp 2011, Alg. 4.4: range finder with `LOWRANK_NITER`
# power iterations and `LOWRANK_OVERSAMPLE` extra columns) when the rank is at most
# `LOWRANK_MAX_FRACTION` of the smaller side, else a full SVD (exact at full rank). Residuals of real layers have flat
# spectra, the hard case: on SmolLM2-135M (average, B=2, r=64) the randomised factors'
# Frobenius error is on average 0.9% (at worst 1.4%) above the optimum; 4 iterations would
# give 0.4% (0.65%) at 1.45x the time. Its matmuls are most of a relaxed conversion's time.
LOWRANK_MAX_FRACTION = 0.25
LOWRANK_OVERSAMPLE = 20
LOWRANK_NITER = 2


def resolve_rank(rank: int | str, in_features: int, out_features: int) -> int:
    """`full` means the smaller side of the matrix; a larger rank is capped to it
    (the paper's sizes assume the cap, e.g. Gemma's 256-wide K/V at r=512)."""
    cap = min(in_features, out_features)
    return cap if rank == "full" else min(int(rank), cap)


def svd_device() -> torch.device:
    """Where residuals are factorised: the GPU if there is one."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def svd_method(rank: int, rows: int, cols: int) -> str:
    """`randomized` when the rank is far below the matrix size, else `full`."""
    return "randomized" if rank <= LOWRANK_MAX_FRACTION * min(rows, cols) else "full"


@torch.no_grad()
def truncated_svd(x: torch.Tensor, rank: int, *, device: torch.device | str | None = None):
    """Best rank-`rank` factorisation of `x` (..., m, n; batched over leading dims):
    returns (U_r S_r, V_r^T, method), so that (U_r S_r) @ V_r^T approximates x, on x's
    device. Computed in fp32 (fp64 at full rank) on `device` (default: `svd_device()`);
    `method` (see `svd_method`) says which algorithm ran. Random draws use the global CPU generator, so a
    seeded caller gets the same factors on any device.

    Rows of V_r^T for singular values that are exactly zero (a zero residual: the depth's
    own layer is its slot's shared layer) are arbitrary; they are made random orthonormal
    rows, orthogonal to the others, so that A is a proper LoRA init there (B = U_r S_r = 0)."""
    rows, cols = x.shape[-2:]
    if not 0 < rank <= min(rows, cols):
        raise ValueError(f"rank must be in 1..{min(rows, cols)}, got {rank}")
    method = svd_method(rank, rows, cols)
    # Full rank is the exactness check (W_shared + B A == W_depth), not a training setting:
    # fp32 factors there put the real SmolLM2-135M's logits 6.5e-5 (mean |diff|, stepwise)
    # from the original, over the 5e-5 bound that fp64 meets (tests/test_real_model.py).
    dtype = torch.float64 if rank == min(rows, cols) else torch.float32
    work = x.detach().to(device=device or svd_device(), dtype=dtype)
    if method == "full":
        u, s, vh = torch.linalg.svd(work, full_matrices=False)
        u, s, vh = u[..., :rank], s[..., :rank], vh[..., :rank, :]
    else:
        u, s, vh = _randomized_svd(work, rank)
    vh = _random_null_rows(vh, s)
    return (u * s.unsqueeze(-2)).to(x.device), vh.to(x.device), method


def _randomized_svd(x: torch.Tensor, rank: int):
    """Randomised range finder with power iterations (QR after every product, for
    stability), then the SVD of the small projected matrix."""
    rows, cols = x.shape[-2:]
    width = min(rank + LOWRANK_OVERSAMPLE, rows, cols)
    omega = torch.randn(*x.shape[:-2], cols, width).to(x)
    q = torch.linalg.qr(x @ omega).Q
    for _ in range(LOWRANK_NITER):
        q = torch.linalg.qr(x @ torch.linalg.qr(x.mT @ q).Q).Q
    u, s, vh = torch.linalg.svd(q.mT @ x, full_matrices=False)
    return q @ u[..., :rank], s[..., :rank], vh[..., :rank, :]


def _random_null_rows(vh: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Replace the rows of `vh` whose singular value is exactly zero by random orthonormal
    rows orthogonal to the other rows (drawn on the CPU generator)."""
    zero = s == 0
    if not zero.any():
        return vh
    vh = vh.clone()
    for index in zero.any(-1).nonzero().tolist():
        mat, null = vh[tuple(index)], zero[tuple(index)]
        kept = mat[~null]
        g = torch.randn(int(null.sum()), mat.shape[-1], dtype=torch.float64)
        kept64 = kept.to(torch.float64).cpu()
        for _ in range(2):  # project out the kept rows (twice: classical Gram-Schmidt)
            g -= (g @ kept64.T) @ kept64
        mat[null] = torch.linalg.qr(g.T).Q.T.to(mat)
    return vh


class DepthLinear(nn.Module):
    """What one depth adds to one shared linear: LoRA factors and, optionally, its own bias."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float, bias: bool):
        super().__init__()
        self.rank = rank
        self.scale = scale
        if rank > 0:
            self.lora_A = nn.Parameter(torch.empty(rank, in_features))
            self.lora_B = nn.Parameter(torch.empty(out_features, rank))
        else:
            self.register_parameter("lora_A", None)
            self.register_parameter("lora_B", None)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        # Initialised here, as nn.Linear does: the model's `_init_weights` does not reach
        # modules inside the wrapped base CausalLM (transformers dispatches to its own).
        self.reset_lora()

    @torch.no_grad()
    def reset_lora(self) -> None:
        """Standard LoRA init (PEFT's, nn.Linear's for A): A Kaiming-uniform, B zero. The
        depth then starts as pure sharing (B @ A = 0), and B's gradient is non-zero from
        the first step, A's from the second (once B != 0)."""
        if self.rank == 0:
            return
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    @torch.no_grad()
    def fill_missing(self) -> None:
        """After a load that did not hold all of this depth's tensors (those transformers did
        not load lack its `_is_hf_initialized` flag): an incomplete LoRA pair gets the
        standard init (`reset_lora`: B zero, so B @ A = 0 and the depth runs its slot's shared
        linear as it is; a loaded half is dropped, alone it means nothing), a missing own bias
        zero. Never left as the uninitialised memory the loader allocated."""
        def loaded(p):
            return getattr(p, "_is_hf_initialized", False)

        if self.rank > 0 and not (loaded(self.lora_A) and loaded(self.lora_B)):
            self.reset_lora()
        if self.bias is not None and not loaded(self.bias):
            nn.init.zeros_(self.bias)

    @torch.no_grad()
    def set_factors(self, us: torch.Tensor, vh: torch.Tensor) -> None:
        """LoRA from a factorisation of the residual: scale * B @ A == us @ vh."""
        self.lora_B.copy_(us / self.scale)
        self.lora_A.copy_(vh)

    @torch.no_grad()
    def init_svd(self, residual: torch.Tensor) -> None:
        """Best rank-r approximation of `residual` (W_depth - W_shared), factorised in fp32
        (fp64 at full rank; see `truncated_svd`) and stored in the parameter dtype: scale * B @ A == U_r S_r V_r^T,
        so full rank restores W_depth."""
        if self.rank == 0:
            return
        us, vh, _ = truncated_svd(residual, self.rank)
        self.set_factors(us, vh)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """What this depth adds to the shared linear's output: its LoRA and its own bias
        (a depth with its own bias runs a shared linear that has none)."""
        y = F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale if self.rank > 0 else 0
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale}, bias={self.bias is not None}"


# The rows of the current call at each depth, per shared slot: {slot key: ((row indices,
# depth), ...)}. Set by `binding.SharedSlot.rows_at` for the length of a grouped call and read
# by its placeholders (`RowGroups`); a context variable, so nested calls and threads each see
# their own. Never mutated: `rows_at` sets a new mapping and resets the old one after.
ROW_DEPTHS: ContextVar[dict] = ContextVar("rrt_row_depths", default={})


class RowGroups:
    """What a placeholder of a slot's grouped view is bound to (depth-wise batching: rows of
    one batch at different depths): `owns`, each depth's own module there (its DepthLinear,
    or its norm). Which rows sit at which depth is per call: `groups()` reads it from
    `ROW_DEPTHS` under `key` (the slot)."""

    def __init__(self, owns: dict[int, nn.Module], key: object):
        self.owns, self.key = owns, key

    def groups(self) -> list[tuple[torch.Tensor, nn.Module]]:
        """(index tensor of a depth's rows (dim 0), that depth's own module), per depth present."""
        rows = ROW_DEPTHS.get().get(self.key)
        if rows is None:
            raise RuntimeError(f"{self.key}: its grouped view ran outside `rows_at(...)`")
        return [(index, self.owns[depth]) for index, depth in rows]


class RelaxedLinear(nn.Linear):
    """A linear of the shared block. Its weight (and bias, unless biases are per depth) is
    shared by every depth. In a depth's view of the block it is bound to that depth's
    `DepthLinear`, which adds B(Ax) and may swap the bias; in the slot's grouped view, to
    `RowGroups`; unbound (the registered module itself) it is the shared linear alone."""

    bound: DepthLinear | RowGroups | None = None  # set once, in a view (rrt.model.binding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = self.bound
        if depth is None:
            return F.linear(x, self.weight, self.bias)
        if isinstance(depth, RowGroups):  # rows at different depths: the shared product, then each group's own
            y = F.linear(x, self.weight, self.bias)
            for rows, own in depth.groups():
                y = y.index_add(0, rows, own.delta(x[rows]))
            return y
        bias = depth.bias if depth.bias is not None else self.bias
        y = F.linear(x, self.weight, bias)
        if depth.rank > 0:
            y = y + F.linear(F.linear(x, depth.lora_A), depth.lora_B) * depth.scale
        return y


class DepthNorm(nn.Module):
    """Placeholder for a norm of the shared block when every depth keeps its own norm: in a
    depth's view it is bound to that depth's norm module, in the grouped view to `RowGroups`."""

    bound: nn.Module | RowGroups | None = None  # set once, in a view (rrt.model.binding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.bound
        if norm is None:
            raise RuntimeError("DepthNorm called outside a depth: run the shared block through its SharedSlot")
        if isinstance(norm, RowGroups):
            out = None
            for rows, own in norm.groups():
                y = own(x[rows])
                out = (x.new_empty(x.shape, dtype=y.dtype) if out is None else out).index_copy(0, rows, y)
            return out
        return norm(x)


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("Norm")

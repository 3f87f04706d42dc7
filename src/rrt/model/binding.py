"""Depth binding: how shared layer k of a recursive model runs at a depth. The model and the
serving engine both go through it.

Each of the K shared layers (`recursive_block`, transformers' own decoder-layer class) runs
at several depths, and at each one it needs what that depth owns: its LoRA (`DepthLinear`s),
its norms (with per-depth norms) and its identity, the plain attributes the family's
constructor sets per layer (`layer_idx`, which picks the KV-cache slot; Gemma 2/3's sliding
window and attention type). The layer calls its linears as `self.q_proj(x)` and reads
`self.layer_idx`, so none of this can be passed down as an argument. A `SharedSlot` is the
one way to run shared layer k:

    slot.at(depth)(hidden, **layer_kwargs)       every row at `depth` (what `DepthLayer`
                                                 runs: training, evaluation, `generate()`)
    with slot.rows_at(depths) as layer:          row r at depth `depths[r]` (the serving
        layer(hidden, **layer_kwargs)            engine's depth-wise batching)

`at(depth)` returns the depth's *view* of the shared block, built once at construction: a
structural copy of the block's module tree whose modules share their originals' parameter,
buffer and hook dictionaries, so they hold the same Parameter objects (an optimizer step,
`.to()`, loading a checkpoint reach them: a parameter set on the original is set on the
view) and fire the same hooks. Views are not registered anywhere, so `state_dict()` and
`parameters()` list each weight once, under the names they always had. In the depth's view
the placeholders of the block (`relax.RelaxedLinear`, `relax.DepthNorm`) are bound to the
depth's own modules and the identity attributes hold the depth's values. Nothing is written
into a module at forward time: every depth runs its own module objects, so calls nest and
interleave (a hook that runs another depth, two threads, gradient checkpointing's
recomputation), and `torch.compile` traces plain module calls.

Rows at different depths in one call (`rows_at`) need per-call data, which of them sit at
which depth, and that cannot be fixed at construction. The slot's grouped view (built once
too) has its placeholders bound to every depth's own modules (`relax.RowGroups`), and
`rows_at` puts the rows of each depth in a context variable (`relax.ROW_DEPTHS`) for the
length of its `with` block: re-entrant, per thread and per asyncio task, and reset on exit
even on error. A grouped call keeps the identity the block was built with: the engine hands
the layer per-row KV caches, masks and rotary embeddings, so no depth's identity is read.

Why this and not:
- a context variable for everything: transformers' code reads the identity as plain
  attributes (`self.layer_idx`), so they would still be written at forward time, and
  dynamo breaks the graph at every `ContextVar.get`;
- decoder layers that take the depth as an argument: that is vendoring every family's
  model code, where the package reuses transformers' classes;
- one full copy of the block per depth: L copies of the shared weights, no sharing.

Limits: a view follows its block's train/eval mode (synced when it is fetched) and sees any
change to its modules' parameters, buffers and hooks; it does not see a submodule *replaced*
in the shared block after construction (quantisation or PEFT wrapping) nor a `forward`
patched onto a module instance (accelerate's `device_map` hooks): rebuild the model after
such surgery.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .relax import ROW_DEPTHS, DepthNorm, RelaxedLinear, RowGroups

PLACEHOLDERS = (RelaxedLinear, DepthNorm)


def bound_view(module: nn.Module, bound: dict[str, object], identity: dict[str, dict[str, object]],
               path: str = "") -> nn.Module:
    """A view of `module` (see the module docstring): the placeholder at each path in `bound`
    bound to its value, and the attributes in `identity[path]` set on the module at `path`."""
    view = object.__new__(type(module))
    view.__dict__.update(module.__dict__)  # shallow: the same _parameters, _buffers and hook dicts
    view.__dict__["_modules"] = {
        name: None if child is None else bound_view(child, bound, identity, f"{path}.{name}" if path else name)
        for name, child in module._modules.items()
    }
    if path in bound:
        view.__dict__["bound"] = bound[path]  # not a submodule: the depth's DepthLayer owns it
    view.__dict__.update(identity.get(path, {}))
    return view


class SharedSlot:
    """Shared layer `slot` (`block`, registered in the model's `recursive_block`) and the
    depths that run it. `owns[depth]` maps each placeholder's path in the block to that
    depth's own module (a `DepthLinear`, or its norm); `identity[depth]` maps a module's path
    to the attributes it has at that depth."""

    def __init__(self, block: nn.Module, slot: int, owns: dict[int, dict[str, nn.Module]],
                 identity: dict[int, dict[str, dict[str, object]]]):
        self.block, self.slot = block, slot
        self.depths = sorted(owns)
        paths = sorted(path for path, module in block.named_modules() if isinstance(module, PLACEHOLDERS))
        for depth in self.depths:
            if sorted(owns[depth]) != paths:
                raise ValueError(f"slot {slot}: depth {depth} owns {sorted(owns[depth])}, the block's placeholders "
                                 f"are {paths}")
        self.placeholders = paths
        self._views = {d: bound_view(block, owns[d], identity.get(d, {})) for d in self.depths}
        self._grouped = bound_view(block, {p: RowGroups({d: owns[d][p] for d in self.depths}, key=self)
                                           for p in paths}, {})

    def _in_mode(self, view: nn.Module) -> nn.Module:
        if view.training != self.block.training:
            view.train(self.block.training)
        return view

    def at(self, depth: int) -> nn.Module:
        """The block as it runs at `depth`, for every row of a call."""
        if depth not in self._views:
            raise ValueError(f"shared slot {self.slot} runs at depths {self.depths}, not {depth}")
        return self._in_mode(self._views[depth])

    @contextlib.contextmanager
    def rows_at(self, depths: torch.Tensor):
        """Within the `with` block, the block with row r of a call at depth `depths[r]` (a
        (rows,) integer tensor): the shared products once over every row, each depth's own
        LoRA and norms on its own rows."""
        view = self._in_mode(self._grouped)
        if not self.placeholders:  # nothing per depth: the plain block serves every row
            yield view
            return
        present = torch.unique(depths).tolist()
        unknown = sorted(set(present) - set(self.depths))
        if unknown:
            raise ValueError(f"shared slot {self.slot} runs at depths {self.depths}, not {unknown}")
        groups = tuple((torch.nonzero(depths == d).flatten(), d) for d in present)
        token = ROW_DEPTHS.set({**ROW_DEPTHS.get(), self: groups})
        try:
            yield view
        finally:
            ROW_DEPTHS.reset(token)

    def __repr__(self) -> str:
        return f"SharedSlot(slot={self.slot}, depths={self.depths})"

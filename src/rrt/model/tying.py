"""Changing the tying pattern of a live RecursiveForCausalLM in place (Dynamic Layer Tying).

    retie(model, new_map)     any pattern (depth -> unique layer, any labels)
    tie(model, i, j)          depth i runs depth j's layer from now on
    untie(model, i)           depth i gets its own layer: a copy of the weights it runs now

Tied depths run one set of Parameter objects (the slot's block in `recursive_block`), so
every depth that runs it sends its gradient to the same tensor. A retie keeps every
Parameter object that still has a place: each new unique layer takes over the old block that
most of its depths ran (not counting the depths being moved), so the layers that did not
move keep their tensors, and with them their optimizer state (`retie_optimizer`). A new
layer that takes over no block is a copy (`clone`) of the block its first depth ran; a block
no depth runs any more is dropped. What each depth owns (its LoRA, its norms with per-depth
norms) stays with the depth. Afterwards the model is the one `RecursiveForCausalLM(config)`
builds from the new map (same parameter names, in the same order), so `save_pretrained` /
`from_pretrained` and Trainer's checkpoints round-trip it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .binding import SharedSlot
from .modeling import RecursiveForCausalLM, _depth_identities
from .sharing import check_layer_map, loop_index, relabel


@dataclass
class Retie:
    """What a retie did to the shared layers' parameters: `copied` maps each new parameter to
    the old one it was copied from; `dropped` lists the parameters no depth runs any more."""
    copied: dict[nn.Parameter, nn.Parameter]
    dropped: list[nn.Parameter]


def _check(model) -> None:
    if not isinstance(model, RecursiveForCausalLM):
        raise ValueError(f"retying needs a recursive model, not {type(model).__name__} (convert it with loops=1 first)")


@torch.no_grad()
def retie(model: RecursiveForCausalLM, layer_map, moved=()) -> Retie:
    """Give `model` the tying pattern `layer_map` in place; `moved` are depths that prefer to
    leave their current layer (they take a copy rather than the original, e.g. `untie`)."""
    _check(model)
    config = model.config
    new_map = relabel(check_layer_map(layer_map, len(config.layer_map)))
    old_map, old_blocks = list(config.layer_map), list(model.recursive_block)
    if new_map == old_map:
        return Retie({}, [])
    groups = [[d for d, s in enumerate(new_map) if s == k] for k in range(max(new_map) + 1)]

    # Each old block goes to the new layer that keeps most of its (unmoved) depths (ties: the
    # earlier layer); a new layer that wins several keeps the one most of its depths ran
    # (ties: the one its earliest depth ran), the others are dropped.
    best: dict[int, tuple[int, int]] = {}  # old slot -> (unmoved depths kept, -new slot)
    for k, depths in enumerate(groups):
        for old in {old_map[d] for d in depths}:
            score = (sum(old_map[d] == old and d not in moved for d in depths), -k)
            if score[0] > 0 and (old not in best or score > best[old]):
                best[old] = score
    taken: dict[int, int] = {}  # new slot -> the old slot whose block it keeps
    for k, depths in enumerate(groups):
        won = [old for old, (_, minus_k) in best.items() if -minus_k == k]
        if won:
            taken[k] = max(won, key=lambda old: (best[old][0], -min(d for d in depths if old_map[d] == old)))
    blocks, copied, sources = [], {}, []
    for k, depths in enumerate(groups):
        if k in taken:
            block = old_blocks[taken[k]]
            origin = taken[k]
        else:  # a copy of what the new layer's first depth ran
            origin = old_map[depths[0]]
            block = copy.deepcopy(old_blocks[origin])
            copied.update(zip(block.parameters(), old_blocks[origin].parameters()))
        blocks.append(block)
        if config.init_sources is not None:
            sources.append(list(config.init_sources[origin]))
    kept = {id(p) for b in blocks for p in b.parameters()}
    dropped = [p for b in old_blocks for p in b.parameters() if id(p) not in kept]

    model.recursive_block = nn.ModuleList(blocks)
    if config.init_sources is not None:
        config.init_sources = sources
    config.set_layer_map(new_map)
    _rebind(model)
    return Retie(copied, dropped)


def _rebind(model: RecursiveForCausalLM) -> None:
    """Rebuild each slot's binding (`SharedSlot`) and point every depth at its slot."""
    config, text = model.config, model.config.text_config
    layer_cls = model.family.layer_cls(text)
    layers = list(model.depth_layers)
    model.shared_slots = []
    for slot, block in enumerate(model.recursive_block):
        depths = [d for d, s in enumerate(config.layer_map) if s == slot]
        identities = _depth_identities(layer_cls, text, block, depths)
        owns = {d: {**{p.replace("__", "."): m for p, m in layers[d].linears.items()},
                    **{p.replace("__", "."): m for p, m in layers[d].norms.items()}} for d in depths}
        shared = SharedSlot(block, slot, owns, identities)
        model.shared_slots.append(shared)
        for d in depths:
            layer = layers[d]
            layer.__dict__["shared"] = shared
            layer.slot, layer.loop = slot, loop_index(config.layer_map, d)


def tie(model: RecursiveForCausalLM, i: int, j: int) -> Retie:
    """Depth i runs depth j's layer (j's parameters, one tensor) from now on."""
    _check(model)
    new = list(model.config.layer_map)
    _depth(new, i), _depth(new, j)
    new[i] = new[j]
    return retie(model, new, moved=(i,))


def untie(model: RecursiveForCausalLM, i: int) -> Retie:
    """Depth i gets a layer of its own: a copy of the weights it runs now (nothing changes if
    no other depth runs them)."""
    _check(model)
    new = list(model.config.layer_map)
    _depth(new, i)
    new[i] = max(new) + 1
    return retie(model, new, moved=(i,))


def _depth(layer_map, d) -> None:
    if not isinstance(d, int) or not 0 <= d < len(layer_map):
        raise ValueError(f"depth must be an integer in [0, {len(layer_map) - 1}], got {d!r}")


def trainable_params(model: nn.Module) -> int:
    """Unique parameters that train (a tied tensor once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- the optimizer ---------------------------------------------------------------------------
def retie_optimizer(optimizer, model: nn.Module, change: Retie, groups_of) -> None:
    """Follow a retie in a torch optimizer (AdamW): a dropped parameter leaves it with its
    state; a copied one joins its source's group with a copy of the source's state (its
    moments and step count: the copy continues the tensor it was, see docs/dlt.md). Each
    group's parameters are then put in the order `groups_of(model)` gives (lists of
    parameters, one per group: Trainer's create_optimizer order), so the optimizer's state
    dict maps onto a model rebuilt from the new map, as a resume builds it."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    for new, old in change.copied.items():
        if old in inner.state:
            inner.state[new] = {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v)
                                for k, v in inner.state[old].items()}
    for p in change.dropped:
        inner.state.pop(p, None)
    wanted = groups_of(model)
    if len(wanted) != len(inner.param_groups):
        raise RuntimeError(f"the optimizer has {len(inner.param_groups)} parameter groups, the model gives "
                           f"{len(wanted)}")
    for group, params in zip(inner.param_groups, wanted):
        group["params"] = list(params)

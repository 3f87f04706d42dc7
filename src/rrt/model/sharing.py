"""Layer sharing (paper Sec. 2.1): which shared slot each depth uses, and which original
layers initialise each slot."""
from __future__ import annotations

import random

import numpy as np

from ..settings import INITS, SHARINGS, STEPWISE_RULES


def depth_to_slot(num_layers: int, num_loops: int, sharing: str = "cycle") -> list[int]:
    """Map every unrolled depth l (0-based) to the shared layer it runs.

    cycle    (paper Eq. 2): the block 0..K-1 is repeated B times -> l mod K
    sequence: each shared layer runs B times in a row           -> l // B
    middle:   the first and last depths keep their own layers (slots 0 and K'+1); the
              L-2 depths between them cycle over K' = (L-2)/B shared slots 1..K'
    """
    if num_loops < 1:
        raise ValueError(f"loops must be >= 1, got {num_loops}")
    if sharing == "middle":
        inner = num_layers - 2
        if inner < num_loops or inner % num_loops:
            raise ValueError(f"loops={num_loops} does not divide the {inner} middle layers of the base model "
                             f"(middle sharing keeps the first and last of its {num_layers} layers unique)")
        k = inner // num_loops
        return [0] + [1 + l % k for l in range(inner)] + [k + 1]
    if num_layers % num_loops:
        raise ValueError(f"loops={num_loops} does not divide the {num_layers} layers of the base model")
    k = num_layers // num_loops
    if sharing == "cycle":
        return [l % k for l in range(num_layers)]
    if sharing == "sequence":
        return [l // num_loops for l in range(num_layers)]
    raise ValueError(f"sharing must be one of {SHARINGS}, got {sharing!r}")


def stepwise_indices(num_layers: int, num_slots: int, rule: str = "ends") -> list[int]:
    """Original layers at fixed intervals.

    ends  (the paper's "fixed-ends", the default): first and last kept, round(linspace(0, L-1, K));
          Python's round (banker's rounding) is the rule, e.g. L=18, K=9 -> [0,2,4,6,8,11,13,15,17].
    start (the paper's "fixed-start"): every B-th layer from layer 0, B = L/K: [0, B, 2B, ...].
    """
    if rule == "ends":
        return [round(float(x)) for x in np.linspace(0, num_layers - 1, num_slots)]
    if rule == "start":
        return list(range(0, num_layers, num_layers // num_slots))[:num_slots]
    raise ValueError(f"stepwise_rule must be one of {STEPWISE_RULES}, got {rule!r}")


def init_sources(layer_map: list[int], init: str, seed: int = 0, *, sharing: str = "cycle",
                 stepwise_rule: str = "ends") -> list[list[int]] | None:
    """For each shared slot, the original layers whose weights initialise it (averaged if
    several). None for `scratch` and `scratch-layers` (random weights). With `middle`
    sharing the first and last slots take the first and last original layers and the rule
    applies to the middle layers and slots alone."""
    if stepwise_rule not in STEPWISE_RULES:
        raise ValueError(f"stepwise_rule must be one of {STEPWISE_RULES}, got {stepwise_rule!r}")
    if init in ("scratch", "scratch-layers"):
        return None
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if sharing == "middle":
        last = len(layer_map) - 1
        inner = [slot - 1 for slot in layer_map[1:last]]
        return [[0]] + [[1 + i for i in sources] for sources in init_sources(inner, init, seed,
                                                                               stepwise_rule=stepwise_rule)] + [[last]]
    num_layers = len(layer_map)
    num_slots = max(layer_map) + 1
    if init == "stepwise":
        return [[i] for i in stepwise_indices(num_layers, num_slots, stepwise_rule)]
    if init == "average":
        return [[l for l in range(num_layers) if layer_map[l] == k] for k in range(num_slots)]
    if init == "lower":
        return [[k] for k in range(num_slots)]
    picked = sorted(random.Random(seed).sample(range(num_layers), num_slots))  # random
    return [[i] for i in picked]


def loop_index(layer_map: list[int], depth: int) -> int:
    """How many times the slot of `depth` has run before it (0 for its first use)."""
    return layer_map[:depth].count(layer_map[depth])


# --- any tying pattern as an explicit map ------------------------------------------------
CUSTOM = "custom"  # RecursiveConfig.sharing of a map that no preset (loops, sharing) gives


def check_layer_map(layer_map, num_layers: int) -> list[int]:
    """`layer_map` (depth -> unique layer, any labels) checked: one non-negative integer per
    depth. ValueError naming what is wrong, in one line."""
    if not isinstance(layer_map, (list, tuple)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in layer_map):
        raise ValueError(f"layer_map must be a list of integers >= 0 (depth -> layer), got {layer_map!r}")
    if len(layer_map) != num_layers:
        raise ValueError(f"layer_map has {len(layer_map)} depths, the base model has {num_layers}")
    return list(layer_map)


def relabel(layer_map: list[int]) -> list[int]:
    """The same tying pattern with its unique layers numbered 0..K-1 in the order of the first
    depth that runs each (the slots of a RecursiveForCausalLM). Every preset already is."""
    order: dict[int, int] = {}
    return [order.setdefault(s, len(order)) for s in layer_map]


def canonical(layer_map: list[int]) -> list[int]:
    """The pattern in DLT's form: for each depth i, the first depth j <= i that runs the same
    layer (j == i: depth i heads its own layer), e.g. slots [0, 1, 1, 2] -> [0, 1, 1, 3]."""
    first: dict[int, int] = {}
    return [first.setdefault(s, d) for d, s in enumerate(layer_map)]


def unique_layers(layer_map: list[int]) -> int:
    return len(set(layer_map))


def is_loop(layer_map: list[int]) -> bool:
    """Whether the map is a loop: K unique layers run in order, B = L/K times (cycle)."""
    k = unique_layers(layer_map)
    return len(layer_map) % k == 0 and list(layer_map) == [l % k for l in range(len(layer_map))]


def preset_of(layer_map: list[int], num_loops: int = 1, sharing: str = "cycle") -> tuple[int, str]:
    """(loops, sharing) describing a map in slot form: the given ones if they give it, else the
    first preset that does, else (1, CUSTOM)."""
    num_layers = len(layer_map)

    def gives(loops, kind):
        try:
            return depth_to_slot(num_layers, loops, kind) == list(layer_map)
        except ValueError:
            return False

    if sharing in SHARINGS and gives(num_loops, sharing):
        return num_loops, sharing
    for kind in SHARINGS:
        for loops in range(1, num_layers + 1):
            if gives(loops, kind):
                return loops, kind
    return 1, CUSTOM

"""Layer sharing (paper Sec. 2.1): which shared slot each depth uses, and which original
layers initialise each slot."""
from __future__ import annotations

import random

import numpy as np

from ..settings import INITS, SHARINGS


def depth_to_slot(num_layers: int, num_loops: int, sharing: str = "cycle") -> list[int]:
    """Map every unrolled depth l (0-based) to the shared layer it runs.

    cycle    (paper Eq. 2): the block 0..K-1 is repeated B times -> l mod K
    sequence: each shared layer runs B times in a row           -> l // B
    """
    if num_loops < 1:
        raise ValueError(f"loops must be >= 1, got {num_loops}")
    if num_layers % num_loops:
        raise ValueError(f"loops={num_loops} does not divide the {num_layers} layers of the base model")
    k = num_layers // num_loops
    if sharing == "cycle":
        return [l % k for l in range(num_layers)]
    if sharing == "sequence":
        return [l // num_loops for l in range(num_layers)]
    raise ValueError(f"sharing must be one of {SHARINGS}, got {sharing!r}")


def stepwise_indices(num_layers: int, num_slots: int) -> list[int]:
    """Original layers at fixed intervals, first and last kept: round(linspace(0, L-1, K)).

    Python's round (banker's rounding) is the rule, e.g. L=18, K=9 -> [0,2,4,6,8,11,13,15,17].
    """
    return [round(float(x)) for x in np.linspace(0, num_layers - 1, num_slots)]


def init_sources(layer_map: list[int], init: str, seed: int = 0) -> list[list[int]] | None:
    """For each shared slot, the original layers whose weights initialise it (averaged if
    several). None for `scratch` (random weights)."""
    num_layers = len(layer_map)
    num_slots = max(layer_map) + 1
    if init == "stepwise":
        return [[i] for i in stepwise_indices(num_layers, num_slots)]
    if init == "average":
        return [[l for l in range(num_layers) if layer_map[l] == k] for k in range(num_slots)]
    if init == "lower":
        return [[k] for k in range(num_slots)]
    if init == "random":
        picked = sorted(random.Random(seed).sample(range(num_layers), num_slots))
        return [[i] for i in picked]
    if init == "scratch":
        return None
    raise ValueError(f"init must be one of {INITS}, got {init!r}")


def loop_index(layer_map: list[int], depth: int) -> int:
    """How many times the slot of `depth` has run before it (0 for its first use)."""
    return layer_map[:depth].count(layer_map[depth])

"""The KV cache of the depth-wise batching engine: one preallocated K and V tensor for
every unrolled depth of every sequence slot, and the per-call view a decoder layer writes
into and reads from, where each row of the batch has its own depth, slot and positions.

    store.k[depth, slot, kv_head, position, head_dim]

A finished request gives its slot back (`release`); memory never grows with the run.
"""
from __future__ import annotations

import torch


class DepthKVCache:
    """K/V for `depths` depths x `slots` sequences x `max_len` positions."""

    def __init__(self, depths: int, slots: int, kv_heads: int, head_dim: int, max_len: int, *,
                 dtype=torch.float32, device="cpu"):
        shape = (depths, slots, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.free = list(range(slots))

    @property
    def slots(self) -> int:
        return self.k.shape[1]

    def allocate(self) -> int:
        if not self.free:
            raise RuntimeError("no free sequence slot")
        return self.free.pop(0)

    def release(self, slot: int) -> None:
        if slot in self.free or not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is not in use")
        self.free.append(slot)
        self.free.sort()

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class RowCache:
    """What one decoder layer call sees as its cache: row r writes its new keys and values
    at (depth[r], slot[r], positions[r]) and reads its own sequence at its own depth, up to
    `length` positions (the attention mask hides what lies beyond each row's own)."""

    def __init__(self, store: DepthKVCache, depth: torch.Tensor, slot: torch.Tensor, positions: torch.Tensor,
                 length: int):
        self.store, self.depth, self.slot, self.positions, self.length = store, depth, slot, positions, length

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx=None, cache_kwargs=None):
        """key, value: (rows, kv_heads, q, head_dim) -> every row's cached (rows, kv_heads,
        length, head_dim), this call's included."""
        q = key.shape[2]
        d = self.depth[:, None].expand(-1, q)
        s = self.slot[:, None].expand(-1, q)
        self.store.k[d, s, :, self.positions] = key.transpose(1, 2).to(self.store.k.dtype)
        self.store.v[d, s, :, self.positions] = value.transpose(1, 2).to(self.store.v.dtype)
        keys = self.store.k[:, :, :, : self.length][self.depth, self.slot]
        values = self.store.v[:, :, :, : self.length][self.depth, self.slot]
        return keys.to(key.dtype), values.to(value.dtype)


def attention_mask(positions: torch.Tensor, length: int, dtype, window: torch.Tensor | None = None) -> torch.Tensor:
    """Additive (rows, 1, q, length) mask: query at position p sees keys 0..p (and, with a
    per-row sliding `window` > 0, only the last `window` of them)."""
    keys = torch.arange(length, device=positions.device)
    visible = keys[None, None, :] <= positions[:, :, None]
    if window is not None:
        w = window[:, None, None]
        visible &= (w <= 0) | (keys[None, None, :] > positions[:, :, None] - w)
    mask = torch.zeros(visible.shape, dtype=dtype, device=positions.device)
    return mask.masked_fill(~visible, torch.finfo(dtype).min)[:, None]

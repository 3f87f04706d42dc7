"""Fixed-length blocks over token stores, memory-mapped: what training and perplexity read.

A split directory (train/, heldout_<name>/) holds `index.json`: the pieces of one token
stream, in order, each a range of a store's tokens.bin. The train index lists every
source file's tokens in canonical file order (`shards.py`), so the stream, its blocks and
the seeded order training draws them in are the same whatever the number of shards; a
held-out set's index is its own store, whole. Block b is tokens [b*S, (b+1)*S) of the
stream (it may span files); the stream's last partial block is dropped, and `max_tokens`
caps the blocks at max_tokens // S.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .shards import add_counts, read_manifest

INDEX = "index.json"
FORMAT = "rrt-token-blocks/1"


def gather_shards(shard_dirs, out_dir, block_size: int, max_tokens: int | None = None) -> dict:
    """Write out_dir/index.json over the shard stores: their files in canonical order,
    checked to be exactly files 0..F-1 of one plan, tokenized alike. Returns the index."""
    manifests = {Path(d): read_manifest(d) for d in shard_dirs}
    if not manifests:
        raise ValueError("no shards to gather")
    first = next(iter(manifests.values()))
    for d, m in manifests.items():
        if m["tokenizer"] != first["tokenizer"]:
            raise ValueError(f"{d} was tokenized with {m['tokenizer']['name']}, "
                             f"other shards with {first['tokenizer']['name']}")
        if (m["location"], m["files_planned"]) != (first["location"], first["files_planned"]):
            raise ValueError(f"{d} read {m['files_planned']} files of {m['location']}, other shards "
                             f"{first['files_planned']} of {first['location']}")
    out_dir = Path(out_dir)
    files = sorted(((f["rank"], d, f) for d, m in manifests.items() for f in m["files"]), key=lambda x: x[0])
    ranks = [r for r, _, _ in files]
    if ranks != list(range(first["files_planned"])):
        missing = sorted(set(range(first["files_planned"])) - set(ranks))
        raise ValueError(f"the shards do not cover the {first['files_planned']} planned files exactly once "
                         f"(missing ranks {missing[:5]}, {len(ranks)} files read)")
    pieces = [{"store": _relative(d, out_dir), "start": f["offset"], "tokens": f["tokens"], "path": f["path"]}
              for _, d, f in files if f["tokens"]]
    sources: dict[str, dict] = {}
    for m in manifests.values():
        for src, c in m["sources"].items():
            add_counts(sources, src, c["documents"], c["tokens"])
    stream = sum(p["tokens"] for p in pieces)
    details = {"location": first["location"], "shards": len(manifests), "files": len(files),
               "documents": sum(m["documents"] for m in manifests.values()),
               "dropped": sum(m["dropped"] for m in manifests.values()), "sources": dict(sorted(sources.items()))}
    return write_index(out_dir, pieces, first, block_size, max_tokens, stream, **details)


def index_store(store, block_size: int) -> dict:
    """Write store/index.json: the store's own tokens, whole, as one stream (held-out sets)."""
    manifest = read_manifest(store)
    pieces = [{"store": ".", "start": 0, "tokens": manifest["tokens"]}] if manifest["tokens"] else []
    return write_index(Path(store), pieces, manifest, block_size, None, manifest["tokens"],
                       documents=manifest["documents"], sources=manifest["sources"])


def write_index(out_dir: Path, pieces, manifest, block_size: int, max_tokens, stream: int, **details) -> dict:
    if block_size < 2:
        raise ValueError(f"block size must be >= 2, got {block_size}")
    blocks = stream // block_size
    if max_tokens is not None:
        blocks = min(blocks, max_tokens // block_size)
    index = {"format": FORMAT, "block_size": block_size, "blocks": blocks, "tokens": blocks * block_size,
             "stream_tokens": stream, "max_tokens": max_tokens, "dtype": manifest["dtype"],
             "tokenizer": manifest["tokenizer"], **details, "pieces": pieces}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INDEX).write_text(json.dumps(index, indent=1) + "\n")  # inside the caller's atomic dir
    return index


def _relative(store: Path, out_dir: Path) -> str:
    """The store's path as seen from out_dir (relative, so a results tree can move)."""
    return os.path.relpath(Path(store).resolve(), out_dir.resolve())


def is_block_dir(path) -> bool:
    return (Path(path) / INDEX).is_file()


def recorded_tokenizer(split_dir) -> dict | None:
    """The tokenizer a split or store written by `rrt tokenize` records (its index.json,
    else its manifest.json: name, vocab_size, fingerprint, ...; no fingerprint in those
    written before it was recorded); None for a directory that is neither (a `datasets` one)."""
    for name in (INDEX, "manifest.json"):
        path = Path(split_dir) / name
        if path.is_file():
            return json.loads(path.read_text()).get("tokenizer") or {}
    return None


class TokenBlocks(torch.utils.data.Dataset):
    """The blocks of a split directory (`index.json`), each {"input_ids": LongTensor[S]};
    stores are memory-mapped on first use (so the object pickles cheaply to workers)."""

    def __init__(self, split_dir):
        self.dir = Path(split_dir)
        path = self.dir / INDEX
        if not path.is_file():
            raise ValueError(f"{split_dir} has no {INDEX} (write it with `rrt tokenize`)")
        index = json.loads(path.read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown format {index.get('format')!r}, expected {FORMAT}")
        self.block_size, self.blocks, self.dtype = index["block_size"], index["blocks"], np.dtype(index["dtype"])
        self.pieces = [(p["store"], p["start"], p["tokens"]) for p in index["pieces"]]
        self.starts = np.cumsum([0] + [n for _, _, n in self.pieces])  # stream offset of each piece
        self.index = index
        self._maps: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.blocks

    def tokens(self, lo: int, hi: int) -> np.ndarray:
        """Stream tokens [lo, hi) as int64."""
        out = np.empty(hi - lo, dtype=np.int64)
        i, at = int(np.searchsorted(self.starts, lo, side="right")) - 1, lo
        while at < hi:
            store, start, n = self.pieces[i]
            take = min(hi, self.starts[i] + n) - at
            src = self._map(store)
            first = start + at - self.starts[i]
            out[at - lo:at - lo + take] = src[first:first + take]
            at += take
            i += 1
        return out

    def __getitem__(self, b: int) -> dict:
        if not 0 <= b < self.blocks:
            raise IndexError(f"block {b} out of range ({self.blocks} blocks)")
        s = self.block_size
        return {"input_ids": torch.from_numpy(self.tokens(b * s, (b + 1) * s))}

    def _map(self, store: str) -> np.ndarray:
        if store not in self._maps:
            self._maps[store] = np.memmap(self.dir / store / "tokens.bin", dtype=self.dtype, mode="r")
        return self._maps[store]


def seeded_order(blocks: int, seed: int) -> list[int]:
    """The order in which training draws `blocks` blocks in its first epoch: the Trainer's
    sampler (accelerate's SeedableRandomSampler, seeded with the run's seed + epoch 0) is
    one torch.randperm. `tests/test_parent_data.py` checks this against a real run."""
    return torch.randperm(blocks, generator=torch.Generator().manual_seed(seed)).tolist()


def blocks_left_after(blocks: int, seed: int, drawn: list[int]) -> list[int]:
    """The block indices (ascending) that runs drawing `drawn[0]`, `drawn[1]`, ... blocks,
    one after the other with `seed`, each from the blocks the runs before it left, did not
    draw: the blocks a post-training run on new data reads. ValueError when a run would
    draw more blocks than are left (it would wrap into a second epoch)."""
    left = list(range(blocks))
    for i, count in enumerate(drawn):
        if count > len(left):
            raise ValueError(f"run {i + 1} of {len(drawn)} before this one drew {count} blocks, "
                             f"but only {len(left)} of {blocks} were left")
        taken = {left[j] for j in seeded_order(len(left), seed)[:count]}
        left = [b for b in left if b not in taken]
    return left

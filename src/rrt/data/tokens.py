"""The tokenized dataset of one base model: the gather step after the train shards.

    <out>/train/index.json        the train shards' files in canonical order, cut into
                                  block_size blocks, capped at max_train_tokens
    <out>/heldout_<name>/         one token store per held-out set of the corpus (whole
                                  documents up to heldout_max_tokens) + its index.json
    <out>/stats.json              documents, tokens, blocks and sources of every split

`shards.py` writes the stores, `blocks.py` reads the blocks. The directory appears complete
or not at all; a split too short for one block is an error."""
from __future__ import annotations

import json
from pathlib import Path

from ..io import atomic_output_dir
from .blocks import gather_shards, index_store
from .shards import write_store
from .tokenizer import DocumentTokenizer


def read_heldout(path: Path) -> list[tuple[str, str]]:
    """(source, text) of a held-out JSON-lines file of the corpus."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r.get("source", "unknown"), r["text"]) for r in rows]


def tokenize_corpus(corpus_dir, tokenizer_dir, shard_dirs, out_dir, block_size: int,
                    max_train_tokens: int | None = None, heldout_max_tokens: int | None = None,
                    min_train_tokens: int | None = None) -> dict:
    """Gather the train shards and tokenize the corpus's held-out sets into `out_dir`.
    min_train_tokens: fail unless train holds at least that many tokens (the largest token
    budget of the experiment: more steps would repeat data)."""
    if block_size < 2:
        raise ValueError(f"block size must be >= 2, got {block_size}")
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    tokenizer = DocumentTokenizer(tokenizer_dir)
    stats = {"block_size": block_size, "tokenizer": str(tokenizer_dir), **tokenizer.describe(), "splits": {}}
    with atomic_output_dir(out_dir) as tmp:
        train = gather_shards(shard_dirs, tmp / "train", block_size, max_train_tokens)
        made_by = train["tokenizer"].get("fingerprint")  # None: shards written before it was recorded
        if made_by is not None and made_by != tokenizer.fingerprint:
            raise ValueError(f"the shards were tokenized by {train['tokenizer']['name']} ({made_by[:19]}…), not by "
                             f"{tokenizer_dir} ({tokenizer.fingerprint[:19]}…): its held-out sets would not match")
        stats["splits"]["train"] = _split_stats(train)
        if train["blocks"] == 0:
            raise ValueError(f"train has {train['stream_tokens']} tokens, less than one block of {block_size}")
        if min_train_tokens is not None and train["tokens"] < min_train_tokens:
            raise ValueError(f"train has {train['tokens']:,} tokens in blocks, fewer than the largest budget "
                             f"{min_train_tokens:,}: read more train files (data.train_files; it read {train['files']}) or "
                             f"lower data.max_train_tokens to at most {train['tokens']:,}")
        for path in sorted(corpus_dir.glob("heldout_*.jsonl")):
            docs = read_heldout(path)
            write_store(docs, tokenizer, tmp / path.stem, heldout_max_tokens, source_file=path.name)
            index = index_store(tmp / path.stem, block_size)
            if index["blocks"] == 0:  # would score as perplexity 1
                raise ValueError(f"{path} has {index['stream_tokens']} tokens, less than one block of {block_size}")
            stats["splits"][path.stem] = _split_stats(index) | {"documents_read": len(docs)}
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def _split_stats(index: dict) -> dict:
    keys = ("documents", "stream_tokens", "blocks", "tokens", "files", "shards", "dropped", "sources")
    return {k: index[k] for k in keys if k in index}

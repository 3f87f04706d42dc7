"""Tokenize a corpus with the base model's tokenizer and pack it into fixed-length blocks:
one `datasets` directory per split (train, heldout_<name>), one column `input_ids`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, load_dataset
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from ..io import atomic_output_dir

# Pretraining end-of-text tokens, tried before the tokenizer's eos: an instruct tokenizer's
# eos ends a chat turn (SmolLM2-Instruct: <|im_end|>), not a document.
END_OF_TEXT_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "<eos>", "</s>")


def document_separator(tokenizer) -> int:
    """Id of the token appended after every document.

    The pretraining end-of-text token when the tokenizer has one as a special token, else
    the eos token. For the embedded SmolLM2-135M-Instruct tokenizer this is <|endoftext|>
    (id 0), SmolLM2's pretraining separator, not its eos <|im_end|> (id 2): measured on
    BoolQ passages packed into 256-token blocks, the model's mean NLL is 3.146 with
    <|endoftext|> against 3.219 with <|im_end|>, which makes the first token of the next
    document far less predictable (NLL 6.6 against 15.3). For base tokenizers (SmolLM2,
    GPT-NeoX, Gemma, Llama) this is their eos token anyway."""
    special = set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {}))
    for token in END_OF_TEXT_TOKENS:
        if token in special:
            return tokenizer.convert_tokens_to_ids(token)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-text or eos token to separate documents")
    return tokenizer.eos_token_id


def _tokenize_batch(batch, tokenizer, sep: int):
    """Token ids of each document with the separator appended. The tokenizer's own special
    tokens are kept (Gemma and Llama start a document with <bos>; SmolLM2 adds none)."""
    ids = tokenizer(batch["text"], verbose=False)["input_ids"]
    return {"ids": [x if x and x[-1] == sep else x + [sep] for x in ids]}


def pack_blocks(token_lists: list[list[int]], block_size: int, max_blocks: int | None = None) -> list[list[int]]:
    """The reference packing, for small inputs: concatenate, cut into block_size blocks,
    drop the remainder (and blocks beyond max_blocks)."""
    flat = [t for ids in token_lists for t in ids]
    n = len(flat) // block_size if max_blocks is None else min(len(flat) // block_size, max_blocks)
    return [flat[i * block_size:(i + 1) * block_size] for i in range(n)]


PACK_BATCH = 10_000  # documents read at a time while packing


def _pack_to_arrow(ids_ds, block_size: int, max_blocks: int | None, path: Path) -> int:
    """Stream the concatenation of the `ids` column into an Arrow file of block_size rows
    (what `pack_blocks` computes, in bounded memory). Returns the number of blocks."""
    schema = pa.schema([("input_ids", pa.list_(pa.int32()))])
    carry, blocks = np.empty(0, dtype=np.int32), 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        batches = ids_ds.with_format("arrow").iter(batch_size=PACK_BATCH)
        for batch in tqdm(batches, total=-(-len(ids_ds) // PACK_BATCH), desc=f"pack {block_size}-token blocks"):
            flat = batch.column("ids").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            carry = np.concatenate([carry, flat.astype(np.int32, copy=False)])
            n = len(carry) // block_size
            if max_blocks is not None:
                n = min(n, max_blocks - blocks)
            if n:
                offsets = pa.array(np.arange(n + 1, dtype=np.int32) * block_size)
                rows = pa.ListArray.from_arrays(offsets, pa.array(carry[:n * block_size]))
                writer.write_batch(pa.record_batch([rows], schema=schema))
                carry, blocks = carry[n * block_size:], blocks + n
            if max_blocks is not None and blocks >= max_blocks:
                break
    return blocks


def documents_within(lengths, max_tokens: int) -> int:
    """How many leading documents (token counts `lengths`) a cap of max_tokens keeps whole:
    up to and including the one that reaches the cap (so at least the first)."""
    reached = np.searchsorted(np.cumsum(lengths), max_tokens)  # first prefix with >= max_tokens
    return min(int(reached) + 1, len(lengths))


def tokenize_split(jsonl: Path, tokenizer, sep: int, block_size: int, max_tokens: int | None, work: Path,
                   whole_documents: bool = False):
    """(Dataset with one column input_ids of block_size-long rows, split stats). `work` holds
    the intermediate Arrow files (the caller deletes it).

    max_tokens caps the split: with whole_documents (held-out sets) at a document boundary,
    keeping the leading documents up to the one that reaches the cap, whole, then packing
    them all (only the last partial block is dropped, as packing always does); otherwise
    (train) at max_tokens // block_size blocks, a prefix that may end mid-document."""
    docs = load_dataset("json", data_files=str(jsonl), split="train", cache_dir=str(work / "cache"))
    ids = docs.map(_tokenize_batch, fn_kwargs={"tokenizer": tokenizer, "sep": sep}, batched=True,
                   remove_columns=docs.column_names, desc=f"tokenize {jsonl.name}")
    lengths = pc.list_value_length(ids.data.column("ids")).to_numpy()
    total = int(lengths.sum())
    stats = {"documents": len(docs)}
    max_blocks = None
    if max_tokens is not None and whole_documents:
        kept = documents_within(lengths, max_tokens)
        if kept < len(ids):
            ids = ids.select(range(kept))
        stats["documents_kept"] = kept
    elif whole_documents:
        stats["documents_kept"] = len(docs)
    elif max_tokens is not None:
        max_blocks = max_tokens // block_size
    blocks = _pack_to_arrow(ids, block_size, max_blocks, work / f"{jsonl.stem}.arrow")
    packed = Dataset.from_file(str(work / f"{jsonl.stem}.arrow"))
    return packed, {**stats, "document_tokens": total, "blocks": blocks, "tokens": blocks * block_size}


def tokenize_corpus(corpus_dir, tokenizer_dir, out_dir, block_size: int, max_train_tokens: int | None = None,
                    heldout_max_tokens: int | None = None) -> dict:
    """Tokenize every *.jsonl of a corpus and save each as a packed `datasets` directory:
    out_dir/train/ and out_dir/heldout_<name>/, one column `input_ids`, every row exactly
    block_size tokens (documents joined by `document_separator`, the remainder dropped),
    plus out_dir/stats.json. max_train_tokens caps train at that many tokens rounded down
    to whole blocks; heldout_max_tokens caps each held-out set at a document boundary: its
    leading documents are kept whole up to the one that reaches the cap (so a long PG19 book
    is never cut; stats record "documents_kept"), then packed. `out_dir` appears complete or
    not at all; a split too short for one block is an error."""
    if block_size < 2:
        raise ValueError(f"block size must be >= 2, got {block_size}")
    corpus_dir = Path(corpus_dir)
    files = sorted(corpus_dir.glob("*.jsonl"))
    if not (corpus_dir / "train.jsonl").is_file():
        raise FileNotFoundError(f"{corpus_dir} has no train.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    sep = document_separator(tokenizer)
    stats = {"block_size": block_size, "tokenizer": str(tokenizer_dir),
             "separator": {"token": tokenizer.convert_ids_to_tokens(sep), "id": sep}, "splits": {}}
    with atomic_output_dir(out_dir) as tmp:
        work = tmp / ".work"
        for path in files:
            train = path.stem == "train"
            cap = max_train_tokens if train else heldout_max_tokens
            packed, stats["splits"][path.stem] = tokenize_split(path, tokenizer, sep, block_size, cap, work,
                                                                whole_documents=not train)
            if len(packed) == 0:  # would score as perplexity 1 or train on nothing
                n = stats["splits"][path.stem]["document_tokens"]
                raise ValueError(f"{path} has {n} tokens, less than one block of {block_size}")
            packed.save_to_disk(str(tmp / path.stem))
            del packed
        shutil.rmtree(work)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats

"""What the data stage of an experiment costs before it runs (for `rrt plan`): the train
files its shard jobs read, the tokens they hold, their disk, and the core-hours and hours
per shard job to tokenize them at a measured rate (`bench/tokenization.py`)."""
from __future__ import annotations

from ..settings import DATA, PLAN
from .shards import files_to_read
from .tokenizer import token_dtype

GB = 1e9


def data_cost(data: dict, largest_budget: int, vocab: int, threads: int) -> dict:
    """One base model's tokenized data. `data` is the config's data section, `largest_budget`
    the most tokens any of the base's variants trains on (already capped by max_train_tokens),
    `threads` each shard job's processes. The embedded corpus (a few MB, all read) counts as
    the largest budget. Stores hold uint16 or uint32 ids (`token_dtype`) and an int64 end
    offset per document (~1,000 tokens each in SlimPajama: under 1% more)."""
    d = {**DATA, **data}
    files = files_to_read(d["source"], d.get("train_files"), largest_budget, d["tokens_per_file"],
                          d["train_files_margin"])
    train = largest_budget if files is None else int(files * d["tokens_per_file"])
    heldout = len(d.get("heldout") or []) * (d.get("heldout_max_tokens") or 0)
    token_bytes = token_dtype(vocab).itemsize
    rate = PLAN["tokenize_tokens_per_s_per_core"]
    shards = int(d["shards"])
    return {"train_files": files, "train_tokens": train, "heldout_tokens": heldout, "token_bytes": token_bytes,
            "gb": (train + heldout) * (token_bytes + 8 / 1000) / GB,
            "core_hours": (train + heldout) / rate / 3600, "shards": shards,
            "shard_wall_hours": train / shards / (rate * max(threads, 1)) / 3600}

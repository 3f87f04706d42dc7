"""Tokenization throughput per core, and what the paper's 60B tokens cost.

    .venv/bin/python bench/tokenization.py                      # SmolLM2's tokenizer
    .venv/bin/python bench/tokenization.py --tokenizer gemma3=DIR --tokenizer smollm2=embedded

Input: the embedded corpus's train set (~14 MB of real English text: Wikipedia, science,
fiction, news, NLP papers, biomedical abstracts), shuffled with a fixed seed so that every
file holds the same mix (as SlimPajama's do), as SlimPajama-layout files (16 zstd JSON-lines
files in 2 chunk folders) in a temporary directory. For each tokenizer it measures,
in one run:
  tokenizer   the Rust tokenizer's batch call alone (`DocumentTokenizer.encode`), one process
  shard_1p    a whole shard job (`tokenize_shard`: read + decompress + parse + 13-gram
              decontamination + tokenize + write) with 1 process
  shard_2p    the same with 2 processes (files in parallel): the scaling
and prints JSON: tokens/s (shard rates after the tokenizer has loaded, which happens once
per job), tokens/s per core, the 2-process speed-up, and the core-hours
60B tokens take at each rate (the paper's largest budget; a shard job's cores are its
`resources.data.threads`). Timings are wall clock; run on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per process, as in a shard job

from rrt.data.corpus import build_corpus  # noqa: E402
from rrt.data.decontaminate import eval_ngrams  # noqa: E402
from rrt.data.shards import (  # noqa: E402
    list_train_files,
    read_documents,
    tokenize_shard,
    write_mirror,
)
from rrt.data.tokenizer import DocumentTokenizer  # noqa: E402
from rrt.model.base_models import embedded_tokenizer  # noqa: E402

PAPER_TOKENS = 60_000_000_000


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench_one(name: str, tok_dir: Path, corpus: Path, work: Path, banned) -> dict:
    files = list_train_files(str(corpus))
    texts = [t for f in files for _, t in read_documents(str(corpus), f)]
    tokenizer, setup = timed(lambda: DocumentTokenizer(tok_dir))  # once per shard job
    tokenizer.encode(texts[:200])  # warm up
    ids, seconds = timed(lambda: tokenizer.encode(texts))
    tokens = sum(len(x) for x in ids)
    out = {"tokenizer": name, "vocab_size": len(tokenizer.hf), "documents": len(texts),
           "characters": sum(map(len, texts)), "tokens": tokens,
           "tokenizer_load_s": round(setup, 2),
           "tokenizer_only": {"seconds": round(seconds, 2), "tokens_per_s_per_core": round(tokens / seconds)}}
    for procs in (1, 2):
        m, seconds = timed(lambda: tokenize_shard(str(corpus), files, 0, 1, tok_dir, work / f"{name}-{procs}p",
                                                  banned=banned, processes=procs, progress=False))
        assert m["tokens"] == tokens, (m["tokens"], tokens)
        # The tokenizer loads once per job (seconds, for Gemma's 256k vocabulary) and a real
        # shard is ~2B tokens: the rate that scales is the one after loading.
        steady = seconds - setup
        out[f"shard_{procs}p"] = {"seconds": round(seconds, 2), "tokens_per_s": round(tokens / steady),
                                  "tokens_per_s_per_core": round(tokens / steady / procs)}
    out["speedup_2p"] = round(out["shard_2p"]["tokens_per_s"] / out["shard_1p"]["tokens_per_s"], 2)
    out["core_hours_60B"] = {
        "tokenizer_only": round(PAPER_TOKENS / out["tokenizer_only"]["tokens_per_s_per_core"] / 3600, 1),
        "shard_1p": round(PAPER_TOKENS / out["shard_1p"]["tokens_per_s_per_core"] / 3600, 1),
        "shard_2p": round(PAPER_TOKENS / out["shard_2p"]["tokens_per_s_per_core"] / 3600, 1),
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", action="append", metavar="NAME=DIR",
                   help="a tokenizer directory to measure (repeatable); DIR 'embedded' is SmolLM2's")
    args = p.parse_args()
    pairs = [x.split("=", 1) for x in (args.tokenizer or ["smollm2=embedded"])]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        embedded = build_corpus(tmp / "embedded")
        docs = [d for f in list_train_files(str(embedded)) for d in read_documents(str(embedded), f)]
        random.Random(0).shuffle(docs)
        corpus = tmp / "corpus"
        write_mirror(corpus, docs, files=16, chunks=2)
        banned = eval_ngrams()  # held-out n-grams aside, what a shard job drops against
        results = []
        for name, where in pairs:
            if where == "embedded":
                embedded_tokenizer().save_pretrained(tmp / name)
                where = tmp / name
            results.append(bench_one(name, Path(where), corpus, tmp, banned))
            print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                  "python": platform.python_version()},
                      "paper_tokens": PAPER_TOKENS, "results": results}, indent=1))


if __name__ == "__main__":
    main()

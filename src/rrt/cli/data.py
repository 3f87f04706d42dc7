"""Handlers of `rrt corpus`, `rrt tokenize-shard` and `rrt tokenize`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data import shards
from ..data.corpus import build_corpus
from ..data.decontaminate import NGRAM, eval_ngrams, ngram_set
from ..data.shards import SourceFileError, plan_files, resolve_location
from ..data.sources import HubLocations
from ..data.tokens import read_heldout, tokenize_corpus
from ..errors import UsageError
from ..flags import section_of
from ..settings import DataSettings
from . import checks


def corpus(args) -> None:
    d = section_of(args, DataSettings, "data")
    checks.new_output_dir(args.out)
    where = HubLocations(slimpajama=resolve_location(d.slimpajama), redpajama=resolve_location(d.redpajama),
                         pg19=resolve_location(d.pg19))
    with checks.removed_on_error(args.out):
        out = build_corpus(args.out, d.seed, source=d.source, heldout_docs=d.heldout_docs, ngram=d.ngram,
                           hub_heldout_chars=d.hub_heldout_chars, hub_locations=where)
    manifest = json.loads((out / "manifest.json").read_text())
    for name, f in manifest["files"].items():
        print(f"{name:24s} {f['documents']:7,d} documents {f['characters']:13,d} characters")
    print(f"saved to {out}")


def _tokenizer_dir(value) -> Path:
    tokenizer = Path(value)
    if tokenizer.is_file():
        raise UsageError(f"--tokenizer {tokenizer} is a file, not a directory (give a model directory)")
    if not tokenizer.is_dir():
        raise UsageError(f"--tokenizer directory {tokenizer} does not exist")
    if not any((tokenizer / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise UsageError(f"--tokenizer directory {tokenizer} has no tokenizer.json or tokenizer_config.json")
    return tokenizer


def _corpus_dir(value) -> Path:
    corpus_dir = Path(value)
    if corpus_dir.is_file():
        raise UsageError(f"--corpus {corpus_dir} is a file, not a directory (give the directory written by `rrt corpus`)")
    if not (corpus_dir / "manifest.json").is_file():
        raise UsageError(f"--corpus {corpus_dir} is not a corpus directory (no manifest.json; build it with `rrt corpus`)")
    return corpus_dir


def banned_ngrams(corpus_dir: Path, n: int):
    """n-gram hashes train must not share: every evaluation item's and the corpus's held-out
    sets' (computed in this process: the hashes are salted per process)."""
    heldout = [[t for _, t in read_heldout(p)] for p in sorted(corpus_dir.glob("heldout_*.jsonl"))]
    return np.sort(np.concatenate([eval_ngrams(n), ngram_set(*heldout, n=n)]))


def tokenize_shard(args) -> None:
    tokenizer = _tokenizer_dir(args.tokenizer)
    checks.at_least("--shards", args.shards, 1)
    if not 0 <= args.shard < args.shards:
        raise UsageError(f"--shard must be in 0..{args.shards - 1}, got {args.shard}")
    checks.at_least("--processes", args.processes, 1)
    count = None if args.files == "all" else _count("--files", args.files)
    checks.new_output_dir(args.out)
    banned, ngram = None, None
    if args.corpus:
        corpus_dir = _corpus_dir(args.corpus)
        ngram = json.loads((corpus_dir / "manifest.json").read_text()).get("decontamination", {}).get("ngram", NGRAM)
        banned = banned_ngrams(corpus_dir, ngram)
    try:
        files = plan_files(args.location, count)
        with checks.removed_on_error(args.out):
            m = shards.tokenize_shard(args.location, files, args.shard, args.shards, tokenizer, args.out, banned=banned,
                               processes=args.processes)
    except (FileNotFoundError, SourceFileError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(f"shard {args.shard} of {args.shards}: {len(m['files'])} of {len(files)} files, {m['documents']:,} documents, "
          f"{m['tokens']:,} tokens ({m['dtype']}), {m['dropped']:,} dropped as contaminated"
          + (f" ({ngram}-grams)" if ngram else ""))
    print(f"saved to {args.out}")


def _count(flag: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"{flag} must be a number or 'all', got {value!r}") from None
    checks.at_least(flag, n, 1)
    return n


def tokenize(args) -> None:
    data = section_of(args, DataSettings, "data")
    corpus_dir, tokenizer = _corpus_dir(args.corpus), _tokenizer_dir(args.tokenizer)
    for d in args.shard_dirs:
        if not (Path(d) / "manifest.json").is_file():
            raise UsageError(f"--shard-dirs {d} is not a complete token store (no manifest.json): "
                             "rerun its `rrt tokenize-shard`")
    checks.new_output_dir(args.out)
    caps = (("--max-train-tokens", data.max_train_tokens), ("--heldout-max-tokens", data.heldout_max_tokens))
    for flag, value in caps:
        if value is not None and value < data.block_size:
            raise UsageError(f"{flag} {value} is less than one block of {data.block_size} tokens")
    try:
        with checks.removed_on_error(args.out):
            stats = tokenize_corpus(corpus_dir, tokenizer, args.shard_dirs, args.out, data.block_size,
                                    data.max_train_tokens, data.heldout_max_tokens, args.min_train_tokens)
    except ValueError as e:  # a split shorter than one block, shards that do not fit together
        raise UsageError(str(e)) from None
    print(f"separator {stats['separator']['token']} (id {stats['separator']['id']}), {stats['dtype']} tokens")
    for split, s in stats["splits"].items():
        print(f"{split:20s} {s['documents']:9,d} documents {s['stream_tokens']:13,d} tokens -> "
              f"{s['blocks']:9,d} blocks {s['tokens']:13,d} tokens")
    print(f"saved to {args.out}")

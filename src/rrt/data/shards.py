"""SlimPajama-layout text read file by file, tokenized in shards into flat token stores.

Source layout (the hub repository cerebras/SlimPajama-627B, a local mirror of it, or the
embedded corpus, which writes its train set the same way):

    <location>/train/chunk<k>/example_train_<n>.jsonl.zst
        zstd-compressed JSON lines {"text": ..., "meta": {"redpajama_set_name": ...}}

Files are taken in one canonical order, by (n, k): chunk1/0, chunk2/0, ..., chunk10/0,
chunk1/1, ... Cerebras shuffled the corpus before cutting it into chunks, so any prefix of
that order is a random sample spread over all chunks. A run reads only the first `files`
(enough for its largest token budget, `files_needed`), and shard i of N reads every N-th
of them from the i-th (`shard_files`): disjoint, deterministic, and together all of them.

Token store (one directory per shard, and one per held-out set):

    tokens.bin      every document's tokens with the separator appended, concatenated, as
                    uint16 when the vocabulary fits, else uint32 (`token_dtype`)
    documents.npy   int64 end offset of each document in tokens.bin
    manifest.json   written last: documents, tokens, per-source counts, tokenizer, dtype,
                    separator, each file read (its rank in the canonical order, offset,
                    documents, tokens), sha256 of tokens.bin

A store directory is written under a temporary name and renamed when complete, so a
killed job leaves nothing that looks done. `blocks.py` gathers stores into one global
token stream (files in canonical order, whatever the number of shards) cut into blocks.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
from pathlib import Path

import fsspec
import numpy as np
import zstandard
from tqdm.auto import tqdm

from ..io import atomic_output_dir
from .decontaminate import contaminated, ngrams
from .sources import SLIMPAJAMA_TRAIN_FILES as TRAIN_GLOB
from .tokenizer import DocumentTokenizer

_TRAIN_NAME = re.compile(r"train/chunk(\d+)/example_train_(\d+)\.jsonl\.zst$")
HUB_PREFIX = "hf://datasets/"


class SourceFileError(ValueError):
    """A source file that cannot be read as zstd-compressed JSON lines (one-line message)."""


# --- where the files are ----------------------------------------------------------------
def resolve_location(location: str) -> str:
    """A hub dataset id ("cerebras/SlimPajama-627B") as its hf:// URL; URLs and local
    directories as given."""
    location = str(location).rstrip("/")
    if "://" in location or Path(location).exists() or location.startswith((".", "/", "~")):
        return location
    if re.fullmatch(r"[\w.-]+/[\w.-]+", location):
        return HUB_PREFIX + location
    return location


def list_train_files(location: str) -> list[str]:
    """Relative paths of every train file under `location`, in canonical (n, k) order."""
    url = resolve_location(location)
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(root):
        raise FileNotFoundError(f"SlimPajama location {location} does not exist")
    found = []
    for path in fs.glob(f"{root.rstrip('/')}/{TRAIN_GLOB}"):
        rel = path[len(root.rstrip("/")) + 1:]
        m = _TRAIN_NAME.fullmatch(rel)
        if m:
            found.append((int(m.group(2)), int(m.group(1)), rel))
    if not found:
        raise FileNotFoundError(f"no SlimPajama train files ({TRAIN_GLOB}) under {location}")
    return [rel for _, _, rel in sorted(found)]


def files_needed(tokens: int, tokens_per_file: float, margin: float) -> int:
    """How many files hold `tokens` tokens with a `margin` to spare (0.1 = 10 % more)."""
    return max(1, int(np.ceil(tokens * (1 + margin) / tokens_per_file)))


def files_to_read(source: str, train_files: int | None, largest_budget: int, tokens_per_file: float,
                  margin: float) -> int | None:
    """How many train files an experiment reads: `train_files` when set; else all of them for
    the embedded corpus (a few MB), and for SlimPajama enough for the largest token budget
    of its variants, `margin` to spare (at least one)."""
    if train_files is not None:
        return train_files
    if source == "embedded":
        return None
    return files_needed(max(largest_budget, 1), tokens_per_file, margin)


def plan_files(location: str, count: int | None) -> list[str]:
    """The first `count` train files in canonical order (None: all of them)."""
    files = list_train_files(location)
    if count is not None and count > len(files):
        raise ValueError(f"{location} has {len(files):,} train files, fewer than the {count:,} asked for "
                         f"(data.train_files); mirror more files or ask for fewer")
    return files[:count]


def shard_files(files: list[str], shard: int, shards: int) -> list[tuple[int, str]]:
    """(rank, path) of the files shard `shard` of `shards` reads: ranks shard, shard + N, ..."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in 0..{shards - 1}, got {shard}")
    return [(rank, files[rank]) for rank in range(shard, len(files), shards)]


def mirror_path(rank: int, chunks: int) -> str:
    """The relative path of the file at `rank` of the canonical order, for a mirror of
    `chunks` chunk folders holding equally many files."""
    return f"train/chunk{rank % chunks + 1}/example_train_{rank // chunks}.jsonl.zst"


def write_mirror(root, docs: list[tuple[str, str]], files: int, chunks: int) -> dict:
    """Write (source, text) pairs as SlimPajama train files under root (rows {"text", "meta":
    {"redpajama_set_name"}}, zstd): consecutive runs of documents into files 0..files-1 of
    the canonical order, so reading them in that order gives `docs` back in order. Returns
    the manifest entry: documents, characters, sources and each file's sha256."""
    root = Path(root)
    out = {"documents": len(docs), "characters": sum(len(t) for _, t in docs), "sources": {}, "files": {}}
    for src, _ in docs:
        out["sources"][src] = out["sources"].get(src, 0) + 1
    out["sources"] = dict(sorted(out["sources"].items()))
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    for f in range(files):
        part = docs[f * len(docs) // files:(f + 1) * len(docs) // files]
        rows = "".join(json.dumps({"text": t, "meta": {"redpajama_set_name": s}}, ensure_ascii=False) + "\n"
                       for s, t in part)
        data = cctx.compress(rows.encode("utf-8"))
        path = root / mirror_path(f, chunks)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out["files"][mirror_path(f, chunks)] = {"documents": len(part), "sha256": hashlib.sha256(data).hexdigest()}
    return out


def add_counts(totals: dict, source: str, documents: int, tokens: int) -> None:
    """Add documents and tokens to a {source: {"documents", "tokens"}} tally."""
    entry = totals.setdefault(source, {"documents": 0, "tokens": 0})
    entry["documents"] += documents
    entry["tokens"] += tokens


# --- reading a file ---------------------------------------------------------------------
def _decompressed_chunks(f, name: str, chunk: int = 1 << 20):
    """Decompressed bytes of a (multi-frame) zstd stream; a file that ends inside a frame is
    an error (zstandard's stream reader would return the partial text silently)."""
    dctx, dobj, empty = zstandard.ZstdDecompressor(), None, True
    while data := f.read(chunk):
        empty = False
        while data:
            dobj = dobj or dctx.decompressobj()
            try:
                yield dobj.decompress(data)
            except zstandard.ZstdError as e:
                raise SourceFileError(f"{name}: not a valid zstd file ({e})") from None
            data = dobj.unused_data if dobj.eof else b""
            if dobj.eof:
                dobj = None
    if empty:
        raise SourceFileError(f"{name}: empty file")
    if dobj is not None:
        raise SourceFileError(f"{name}: truncated (the file ends inside a zstd frame)")


def read_documents(location: str, rel: str):
    """(redpajama_set_name, text) of every row of one file, in file order."""
    url = f"{resolve_location(location)}/{rel}"
    with fsspec.open(url, "rb") as f:
        pending, line_no = b"", 0
        for block in _decompressed_chunks(f, url):
            lines = (pending + block).split(b"\n")
            pending = lines.pop()
            for line in lines:
                line_no += 1
                if line.strip():
                    yield _parse_row(line, url, line_no)
        if pending.strip():
            yield _parse_row(pending, url, line_no + 1)


def _parse_row(line: bytes, url: str, line_no: int) -> tuple[str, str]:
    try:
        row = json.loads(line)
        text = row["text"]
    except (ValueError, KeyError, TypeError) as e:
        raise SourceFileError(f"{url}: line {line_no} is not a JSON row with a text field ({e})") from None
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    return meta.get("redpajama_set_name") or "unknown", text


# --- tokenizing ---------------------------------------------------------------------
# One per worker process (set before forking, inherited): the tokenizer and the banned
# n-grams. Fork, not spawn: n-gram hashes use Python's per-process salted string hash.
_WORKER: dict = {}


def _tokenize_file(job: tuple[str, str]) -> dict:
    """One file: its documents (empty ones skipped, contaminated ones dropped) tokenized."""
    location, rel = job
    tok, banned = _WORKER["tokenizer"], _WORKER["banned"]
    sources, texts = [], []
    for src, text in read_documents(location, rel):
        if text.strip():
            sources.append(src)
            texts.append(text)
    dropped = 0
    if banned is not None and len(banned) and texts:
        bad = contaminated([ngrams(t) for t in texts], banned)
        dropped = sum(bad)
        sources = [s for s, b in zip(sources, bad) if not b]
        texts = [t for t, b in zip(texts, bad) if not b]
    ids = tok.encode(texts)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    by_source: dict[str, dict] = {}
    for src, n in zip(sources, lengths.tolist()):
        add_counts(by_source, src, 1, n)
    tokens = np.concatenate(ids) if ids else np.empty(0, dtype=tok.dtype)
    return {"path": rel, "tokens": tokens, "lengths": lengths, "dropped": dropped,
            "sources": dict(sorted(by_source.items()))}


class StoreWriter:
    """Appends documents to a token store directory and writes its manifest last."""

    def __init__(self, out: Path, tokenizer: DocumentTokenizer):
        self.out, self.tokenizer = out, tokenizer
        self._f = open(out / "tokens.bin", "wb")
        self._sha = hashlib.sha256()
        self.ends: list[np.ndarray] = []
        self.tokens = 0
        self.sources: dict[str, dict] = {}

    def add(self, tokens: np.ndarray, lengths: np.ndarray, sources: dict) -> int:
        """Append documents (their concatenated tokens and lengths); returns their offset."""
        offset = self.tokens
        data = tokens.astype(self.tokenizer.dtype, copy=False).tobytes()
        self._f.write(data)
        self._sha.update(data)
        self.ends.append(offset + np.cumsum(lengths))
        self.tokens += int(lengths.sum())
        for src, c in sources.items():
            add_counts(self.sources, src, c["documents"], c["tokens"])
        return offset

    def close(self, **details) -> dict:
        self._f.close()
        ends = np.concatenate(self.ends) if self.ends else np.empty(0, dtype=np.int64)
        np.save(self.out / "documents.npy", ends.astype(np.int64))
        manifest = {"documents": len(ends), "tokens": self.tokens, "tokenizer": self.tokenizer.describe(),
                    "dtype": self.tokenizer.dtype.name, "sources": dict(sorted(self.sources.items())), **details,
                    "sha256": self._sha.hexdigest()}
        (self.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        return manifest


def tokenize_shard(location: str, files: list[str], shard: int, shards: int, tokenizer_dir, out_dir,
                   banned=None, processes: int = 1, progress: bool = True) -> dict:
    """Tokenize shard `shard` of `shards` of `files` (relative paths under `location`, in
    canonical order) into the token store `out_dir`, `processes` files at a time. Documents
    sharing an n-gram with `banned` (an `ngram_set`) are dropped. `out_dir` appears
    complete, manifest last, or not at all. Returns the manifest."""
    mine = shard_files(files, shard, shards)
    tokenizer = DocumentTokenizer(tokenizer_dir)
    _WORKER.update(tokenizer=tokenizer, banned=banned)
    jobs = [(location, rel) for _, rel in mine]
    entries, dropped = [], 0
    with atomic_output_dir(out_dir) as tmp:
        writer = StoreWriter(tmp, tokenizer)
        pool = None
        if processes > 1 and len(jobs) > 1:
            # The Rust tokenizer's own threads would oversubscribe the job's cores.
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            pool = multiprocessing.get_context("fork").Pool(min(processes, len(jobs)))
        try:
            results = pool.imap(_tokenize_file, jobs) if pool else map(_tokenize_file, jobs)
            bar = tqdm(results, total=len(jobs), desc=f"tokenize shard {shard}/{shards}", unit="file",
                       disable=not progress)
            for (rank, _), r in zip(mine, bar):
                offset = writer.add(r["tokens"], r["lengths"], r["sources"])
                entries.append({"path": r["path"], "rank": rank, "offset": offset, "documents": len(r["lengths"]),
                                "tokens": int(r["lengths"].sum()), "dropped": r["dropped"], "sources": r["sources"]})
                dropped += r["dropped"]
                bar.set_postfix(tokens=f"{writer.tokens:,}", refresh=False)
        finally:
            if pool:
                pool.terminate()
        manifest = writer.close(location=location, shard=shard, shards=shards, files_planned=len(files),
                                dropped=dropped, files=entries)
    return manifest


def write_store(docs, tokenizer: DocumentTokenizer, out_dir, max_tokens: int | None = None, **details) -> dict:
    """A token store of (source, text) pairs, in order (held-out sets). max_tokens keeps the
    leading documents up to and including the one that reaches it, whole (so at least one):
    a long PG19 book is never cut."""
    sources, texts = zip(*docs) if docs else ((), ())
    ids = tokenizer.encode(list(texts))
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    kept = len(ids) if max_tokens is None else documents_within(lengths, max_tokens)
    by_source: dict[str, dict] = {}
    for src, n in zip(sources[:kept], lengths[:kept].tolist()):
        add_counts(by_source, src, 1, n)
    with atomic_output_dir(out_dir) as tmp:
        writer = StoreWriter(tmp, tokenizer)
        tokens = np.concatenate(ids[:kept]) if kept else np.empty(0, dtype=tokenizer.dtype)
        writer.add(tokens, lengths[:kept], by_source)
        manifest = writer.close(documents_read=len(ids), max_tokens=max_tokens, **details)
    return manifest


def documents_within(lengths, max_tokens: int) -> int:
    """How many leading documents (token counts `lengths`) a cap of max_tokens keeps whole:
    up to and including the one that reaches the cap (so at least the first)."""
    reached = np.searchsorted(np.cumsum(lengths), max_tokens)  # first prefix with >= max_tokens
    return min(int(reached) + 1, len(lengths))


# --- reading a store --------------------------------------------------------------------
def read_manifest(store) -> dict:
    """A complete store's manifest, checked against its files' sizes (one-line errors)."""
    store = Path(store)
    path = store / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{store} is not a complete token store (no manifest.json)")
    manifest = json.loads(path.read_text())
    size = (store / "tokens.bin").stat().st_size if (store / "tokens.bin").is_file() else -1
    if size != manifest["tokens"] * np.dtype(manifest["dtype"]).itemsize:
        raise ValueError(f"{store}/tokens.bin has {size} bytes, its manifest says {manifest['tokens']:,} "
                         f"{manifest['dtype']} tokens")
    return manifest


def store_tokens(store) -> np.ndarray:
    """tokens.bin of a store, memory-mapped (read-only)."""
    manifest = read_manifest(store)
    if manifest["tokens"] == 0:
        return np.empty(0, dtype=manifest["dtype"])
    return np.memmap(Path(store) / "tokens.bin", dtype=manifest["dtype"], mode="r")


def store_documents(store) -> list[np.ndarray]:
    """Every document of a store as an array of token ids (for checks and tests)."""
    tokens, ends = store_tokens(store), np.load(Path(store) / "documents.npy")
    starts = np.concatenate([[0], ends[:-1]])
    return [np.asarray(tokens[s:e]) for s, e in zip(starts, ends)]

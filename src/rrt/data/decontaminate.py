"""Keeping train clean of what is measured: documents are deduplicated, and every train
document that shares a 13-word sequence with a held-out document or with any item of the
7 evaluation tasks is dropped (the GPT-3 decontamination rule; it also catches
near-duplicates, e.g. two Wikipedia paragraphs quoting each other)."""
from __future__ import annotations

import functools
import re

import numpy as np

from .olmo_eval import arrow_rows, first_requests
from .sources import lambada_passages

NGRAM = 13  # words shared with a held-out or evaluation text that disqualify a train document
MIN_CHARS = 64  # shorter "documents" are fragments (empty SciQ supports, stray headings)


def _strings(x):
    """Every string inside a JSON value (the text fields of an evaluation item)."""
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)


def eval_task_texts() -> list[str]:
    """The items of the 7 evaluation tasks (HellaSwag, PIQA, WinoGrande, ARC-Easy,
    ARC-Challenge, OpenBookQA, LAMBADA) as shipped: the raw validation rows (which their
    rc/mc/val variants are built from), the ARC and OpenBookQA test splits (test_*
    variants) and every LAMBADA passage."""
    rows = [*arrow_rows("hellaswag"), *arrow_rows("piqa"), *arrow_rows("winogrande"),
            *arrow_rows("ai2_arc"), *arrow_rows("openbookqa")]
    texts = ["\n".join(_strings(r)) for r in rows]
    for task in ("arc_easy", "arc_challenge", "openbookqa"):
        texts += ["\n".join(_strings(r["doc"])) for r in first_requests(task, "test_rc_5shot")]
    return texts + lambada_passages()


_WORD = re.compile(r"\w+")
_MULT = 0x100000001B3  # FNV-1a 64-bit prime: mixes word hashes into one per window


def ngrams(text: str, n: int = NGRAM):
    """Hashes (uint64 array) of the text's lowercased n-word windows; punctuation and spacing
    are ignored, so reformatted copies still match. Words hash with Python's string hash,
    which is salted per process: compare these within one run, never store them."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return np.empty(0, dtype=np.uint64)
    h = np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
    m = len(words) - n + 1
    out = h[:m].copy()
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
        for k in range(1, n):
            out = out * np.uint64(_MULT) ^ h[k:k + m]
    return out


def ngram_set(*text_lists, n: int = NGRAM):
    """The n-gram hashes of all texts of all lists, sorted (for `contaminated`)."""
    arrays = [ngrams(t, n) for texts in text_lists for t in texts]
    return np.sort(np.concatenate(arrays)) if arrays else np.empty(0, dtype=np.uint64)


def contaminated(arrays: list, banned) -> list[bool]:
    """Whether each text, given by its `ngrams`, shares one with `banned` (an `ngram_set`):
    one binary search per window, vectorised over all windows of all texts."""
    if not arrays or not len(banned):
        return [False] * len(arrays)
    windows = np.concatenate(arrays)
    order = np.argsort(windows)  # sorted needles make the binary searches cache-friendly (10x)
    needles = windows[order]
    found = banned[np.minimum(np.searchsorted(banned, needles), len(banned) - 1)] == needles
    owner = np.repeat(np.arange(len(arrays)), [len(a) for a in arrays])
    hit = np.zeros(len(arrays), dtype=bool)
    hit[owner[order[found]]] = True
    return hit.tolist()


def eval_ngrams(n: int = NGRAM):
    """n-gram hashes of every evaluation item, sorted (cached: the package does not change)."""
    return _eval_ngrams(n)


@functools.lru_cache(maxsize=4)  # behind a wrapper: lru_cache keys f() and f(13) apart
def _eval_ngrams(n: int):
    return ngram_set(eval_task_texts(), n=n)


def doc_key(text: str) -> str:
    """Identity of a document for deduplication: its words, whatever the spacing."""
    return " ".join(text.split())


def dedupe(texts) -> list[str]:
    """Stripped, long enough, first occurrence only (by `_key`)."""
    out, seen = [], set()
    for t in texts:
        t = (t or "").strip()
        if len(t) >= MIN_CHARS and doc_key(t) not in seen:
            seen.add(doc_key(t))
            out.append(t)
    return out

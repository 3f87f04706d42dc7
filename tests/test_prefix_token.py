"""Perplexity conditioned on the tokenizer's prefix token (<bos> for Gemma and Llama
tokenizers, none for SmolLM2's): each held-out block gets it in front without it being
scored, as lm-eval's rolling log-likelihood does; a tokenizer without one changes nothing."""
import json

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rrt.data.tokenizer import DocumentTokenizer, prefix_token
from rrt.eval.evaluate import evaluate_model
from rrt.eval.perplexity import exit_perplexity, perplexities, perplexity
from rrt.model.convert import convert

from .conftest import make_tiny
from .test_data import word_tokenizer

BOS = 52  # <bos> in the Gemma-like word tokenizer below


def bos_tokenizer(path):
    """Words 'w0'..'w49' -> ids 0..49, <eos> 50, <unk> 51, <bos> 52, which it puts before
    every text, as Gemma's tokenizer does."""
    vocab = {f"w{i}": i for i in range(50)} | {"<eos>": 50, "<unk>": 51, "<bos>": BOS}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                            unk_token="<unk>").save_pretrained(path)
    return path


@pytest.fixture
def held(tmp_path):
    """Six blocks of 10 tokens cut mid-document, and one that starts a document (<bos>)."""
    g = torch.Generator().manual_seed(5)
    rows = torch.randint(0, 50, (7, 10), generator=g)
    rows[4, 0] = BOS
    Dataset.from_dict({"input_ids": rows.tolist()}).save_to_disk(str(tmp_path / "held"))
    return tmp_path / "held", rows


def by_hand(model, rows, prefix) -> tuple[float, int]:
    """Summed NLL and count of tokens 1..n-1 of each block, from one unbatched forward of
    the block with `prefix` in front (unless it starts with it)."""
    total, count = 0.0, 0
    for row in rows:
        lead = [] if prefix is None or row[0] == prefix else [prefix]
        logits = model(input_ids=torch.tensor([lead + row.tolist()])).logits[0, len(lead):-1]
        total += torch.nn.functional.cross_entropy(logits.float(), row[1:], reduction="sum").item()
        count += len(row) - 1
    return total, count


def test_the_prefix_token_is_the_tokenizers_bos_when_it_adds_one(tmp_path, smollm2_tokenizer):
    tok = AutoTokenizer.from_pretrained(bos_tokenizer(tmp_path / "bos"))
    assert prefix_token(tok) == BOS
    # the same token every training document starts with
    assert [d[0] for d in DocumentTokenizer(tmp_path / "bos").encode(["w3 w4", "w5"])] == [BOS, BOS]
    assert prefix_token(AutoTokenizer.from_pretrained(word_tokenizer(tmp_path / "plain"))) is None
    assert smollm2_tokenizer.bos_token_id is not None and prefix_token(smollm2_tokenizer) is None  # adds none


@pytest.mark.parametrize("family", ["gemma", "gemma3"])
def test_bos_conditions_every_block_without_being_scored(family, held):
    path, rows = held
    model = make_tiny(family, layers=2)
    plain = perplexity(model, path, batch_size=3)
    with_bos = perplexity(model, path, batch_size=3, prefix_token=BOS)
    # the same tokens scored: 9 per block, the prefix adds context only
    assert with_bos["tokens"] == plain["tokens"] == 7 * 9
    nll, count = by_hand(model, rows, BOS)
    assert count == with_bos["tokens"] and with_bos["nll"] == pytest.approx(nll / count, rel=1e-5)
    nll, _ = by_hand(model, rows, None)
    assert plain["nll"] == pytest.approx(nll / count, rel=1e-5)
    assert abs(with_bos["ppl"] - plain["ppl"]) > 1e-3 * plain["ppl"]


def test_exit_perplexities_get_the_same_prefix(held):
    path, rows = held
    model = convert(make_tiny("gemma", layers=4), loops=2, init="stepwise", rank=4).eval()
    final, exits = perplexities(model, path, batch_size=3, thresholds={"max_prob": [0.5]}, prefix_token=BOS)
    assert final == perplexity(model, path, batch_size=3, prefix_token=BOS)
    assert exits == exit_perplexity(model, path, batch_size=3, thresholds={"max_prob": [0.5]}, prefix_token=BOS)
    assert exits["exits"][-1]["ppl"] == pytest.approx(final["ppl"], rel=1e-6)
    assert exits["tokens"] == final["tokens"] == 7 * 9
    nll, count = by_hand(model, rows, BOS)
    assert final["nll"] == pytest.approx(nll / count, rel=1e-5)
    plain = perplexities(model, path, batch_size=3, thresholds={"max_prob": [0.5]})[1]
    # every exit moves (a random tiny model barely attends to one more token: 2e-5 at exit 1,
    # 2e-3 at the last; the same computation repeats bit for bit)
    assert all(abs(a["ppl"] - b["ppl"]) > 1e-6 * b["ppl"] for a, b in zip(exits["exits"], plain["exits"]))


def test_eval_takes_the_prefix_from_the_models_tokenizer(held, tmp_path, tiny_real_vocab_dir):
    """A Gemma model whose tokenizer adds <bos> is scored after it; SmolLM2's tokenizer adds
    none, so its numbers are the unprefixed ones, bit for bit."""
    path, _ = held
    model = make_tiny("gemma", layers=2)
    model.save_pretrained(tmp_path / "gemma")
    bos_tokenizer(tmp_path / "gemma")
    result = evaluate_model(tmp_path / "gemma", tmp_path / "g.json", {"x": str(path)}, tasks=[], batch_size=3)
    assert result["prefix_token"] == BOS and json.loads((tmp_path / "g.json").read_text())["prefix_token"] == BOS
    assert result["ppl"]["x"] == perplexity(model, path, batch_size=3, prefix_token=BOS)
    assert result["ppl"]["x"] != perplexity(model, path, batch_size=3)

    smol = tiny_real_vocab_dir
    result = evaluate_model(smol, tmp_path / "s.json", {"x": str(path)}, tasks=[], batch_size=3)
    from transformers import AutoModelForCausalLM
    again = perplexity(AutoModelForCausalLM.from_pretrained(smol).eval(), path, batch_size=3)
    assert result["prefix_token"] is None and result["ppl"]["x"] == again

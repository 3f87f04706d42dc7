"""The `rrt` command line: happy path, and bad input -> one line, non-zero exit, no output dir."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from rrt.cli import main

from .conftest import cli_error, make_tiny


@pytest.fixture
def base_dir(tmp_path):
    path = tmp_path / "base"
    make_tiny("llama").save_pretrained(path)
    return path


def test_convert_and_info(base_dir, tmp_path, capsys):
    out = tmp_path / "rec"
    assert main(["convert", "--base", str(base_dir), "--out", str(out), "--init", "stepwise", "--loops", "2",
                 "--rank", "8", "--rank-attn", "4"]) == 0
    printed = capsys.readouterr().out
    assert "depth   5 -> slot   2 (loop 1)  init [5]" in printed
    assert "lora" in printed and "non_embedding" in printed
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.lora_rank_attn == 4 and model.config.lora_rank_mlp == 8
    assert main(["info", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("recursive llama: L=6 depths = K=3 shared layers")


def _fails(argv, capsys, match):
    err = cli_error(capsys, argv)
    assert match in err, err


@pytest.mark.parametrize("extra,match", [
    (["--loops", "4"], "loops=4 does not divide the 6 layers"),
    (["--loops", "2", "--rank", "-3"], "--rank: rank must be a non-negative integer or 'full', got '-3'"),
    (["--loops", "2", "--rank-mlp", "big"], "--rank-mlp"),
])
def test_bad_arguments(base_dir, tmp_path, capsys, extra, match):
    out = tmp_path / "rec"
    _fails(["convert", "--base", str(base_dir), "--out", str(out), "--init", "average", *extra], capsys, match)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no temp dir left behind either


def test_missing_and_corrupt_base(base_dir, tmp_path, capsys):
    out = tmp_path / "rec"
    args = ["--out", str(out), "--init", "average", "--loops", "2"]
    _fails(["convert", "--base", str(tmp_path / "nope"), *args], capsys, "does not exist")
    weights = base_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _fails(["convert", "--base", str(base_dir), *args], capsys, f"cannot load --base from {base_dir}")
    (base_dir / "config.json").unlink()
    _fails(["convert", "--base", str(base_dir), *args], capsys, "has no config.json")
    assert not out.exists()


def test_unknown_family_and_existing_out(tmp_path, capsys):
    from transformers import BertConfig, BertLMHeadModel

    bert = tmp_path / "bert"
    BertLMHeadModel(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32, is_decoder=True)).save_pretrained(bert)
    out = tmp_path / "rec"
    _fails(["convert", "--base", str(bert), "--out", str(out), "--init", "lower", "--loops", "2"], capsys,
           "unsupported model family 'bert'")
    assert not out.exists()
    out.mkdir()
    _fails(["convert", "--base", str(bert), "--out", str(out), "--init", "lower", "--loops", "2"], capsys,
           "already exists")


def test_converted_dir_reproduces_base_at_full_rank(base_dir, tmp_path):
    out = tmp_path / "rec"
    assert main(["convert", "--base", str(base_dir), "--out", str(out), "--init", "random", "--loops", "3",
                 "--rank", "full", "--per-depth-norms", "--seed", "5"]) == 0
    ids = torch.arange(10).unsqueeze(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.init == "random" and model.config.seed == 5
    assert (model(ids).logits - base(ids).logits).abs().max() <= 1e-4

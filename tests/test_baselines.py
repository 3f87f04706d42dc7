import pytest
import torch

from rrt.cli import main
from rrt.model.baselines import reduce_depth
from rrt.model.convert import convert
from rrt.model.params import count_params

from .conftest import FAMILIES, cli_error, make_tiny


@pytest.mark.parametrize("family", FAMILIES)
def test_reduced_model_is_the_first_k_layers(family, ids):
    base = make_tiny(family, layers=6)
    small = reduce_depth(base, 3, "lower")
    assert small.config.num_hidden_layers == 3
    base_sd, small_sd = base.state_dict(), small.state_dict()
    assert all(torch.equal(small_sd[k], base_sd[k]) for k in small_sd)
    # and its non-embedding size equals the pure recursive model with K = 3
    rec = convert(base, loops=2, init="lower")
    assert count_params(small)["non_embedding"] == count_params(rec)["non_embedding"]
    assert small(ids).logits.shape == base(ids).logits.shape


def test_scratch_is_random(ids):
    base = make_tiny("llama")
    small = reduce_depth(base, 3, "scratch", seed=2)
    assert not torch.equal(small.get_input_embeddings().weight, base.get_input_embeddings().weight)
    assert torch.equal(reduce_depth(base, 3, "scratch", seed=2)(ids).logits, small(ids).logits)


def test_gemma3_keeps_the_layer_types_of_the_first_depths():
    base = make_tiny("gemma3", layers=6)
    small = reduce_depth(base, 4, "lower")
    assert small.config.layer_types == base.config.layer_types[:4]


def test_cli_reduce(tmp_path, capsys):
    base_dir = tmp_path / "base"
    make_tiny("gpt_neox").save_pretrained(base_dir)
    assert main(["reduce", "--base", str(base_dir), "--out", str(tmp_path / "r3"), "--layers", "3"]) == 0
    err = cli_error(capsys, ["reduce", "--base", str(base_dir), "--out", str(tmp_path / "r9"), "--layers", "9"])
    assert err == "rrt reduce: error: --layers/--init: layers must be in 1..6, got 9"
    assert not (tmp_path / "r9").exists()
    assert main(["reduce", "--base", str(base_dir), "--out", str(tmp_path / "b2"), "--loops", "2"]) == 0
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "b2").num_hidden_layers == 3

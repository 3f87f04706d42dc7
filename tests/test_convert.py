"""Conversion correctness on small random models of every family."""
import itertools

import pytest
import torch

from rrt import RecursiveForCausalLM
from rrt.model.convert import convert, parse_rank
from rrt.model.params import count_params

from .conftest import FAMILIES, make_tiny


@pytest.mark.parametrize("family", FAMILIES)
def test_one_loop_is_the_original(family, ids):
    base = make_tiny(family)
    model = convert(base, loops=1, init="lower")
    assert torch.equal(model(ids).logits, base(ids).logits)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("init,sharing", list(itertools.product(["stepwise", "average", "lower", "random"],
                                                                   ["cycle", "sequence"])))
def test_full_rank_with_per_depth_norms_reproduces_original(family, init, sharing, ids):
    base = make_tiny(family)
    model = convert(base, loops=2, init=init, sharing=sharing, rank="full", per_depth_norms=True).eval()
    diff = (model(ids).logits - base(ids).logits).abs().max().item()
    assert diff <= 1e-4
    # and it really is recursive: half the unique layers
    assert len(model.recursive_block) == base.config.num_hidden_layers // 2


@pytest.mark.parametrize("family", FAMILIES)
def test_pure_sharing_is_not_the_original(family, ids):
    """Control for the exactness test above: rank 0 must change the function."""
    base = make_tiny(family)
    model = convert(base, loops=2, init="average", per_depth_norms=True).eval()
    assert (model(ids).logits - base(ids).logits).abs().max().item() > 1e-2


def test_average_init_is_the_mean_of_tied_layers():
    base = make_tiny("gpt_neox")
    model = convert(base, loops=3, init="average", sharing="cycle")  # K=2: slot 0 <- layers 0, 2, 4
    originals = base.gpt_neox.layers
    for name, tensor in model.recursive_block[0].state_dict().items():
        expected = torch.stack([originals[i].state_dict()[name] for i in (0, 2, 4)]).mean(0)
        torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-7)


def test_selection_inits_copy_the_source_layer():
    base = make_tiny("llama")
    for init, sources in (("stepwise", [0, 2, 5]), ("lower", [0, 1, 2])):
        model = convert(base, loops=2, init=init)
        assert model.config.init_sources == [[s] for s in sources]
        for slot, src in enumerate(sources):
            for name, tensor in model.recursive_block[slot].state_dict().items():
                assert torch.equal(tensor, base.model.layers[src].state_dict()[name]), (init, slot, name)


def test_svd_init_is_the_best_rank_r_approximation():
    base = make_tiny("llama")
    rank = 5
    model = convert(base, loops=2, init="average", rank=rank)
    layer = model.depth_layers[4]  # slot 1, second loop
    own = layer.linears["mlp__down_proj"]
    shared = layer.block.mlp.down_proj.weight
    residual = base.model.layers[4].mlp.down_proj.weight - shared
    approx = own.lora_B @ own.lora_A
    s = torch.linalg.svdvals(residual)
    # Eckart-Young: the error of the best rank-r approximation is the tail of the spectrum
    err = torch.linalg.matrix_norm(residual - approx)
    torch.testing.assert_close(err, s[rank:].square().sum().sqrt(), rtol=1e-4, atol=1e-5)
    assert torch.linalg.matrix_rank(approx) == rank


def test_lora_alpha_scale_is_divided_out_of_the_init(ids):
    base = make_tiny("gemma3")
    a = convert(base, loops=2, init="average", rank=8).eval()
    b = convert(base, loops=2, init="average", rank=8, lora_alpha=16).eval()  # scale 2
    own = b.depth_layers[0].linears["self_attn__q_proj"]
    assert own.scale == 2.0
    torch.testing.assert_close(b(ids).logits, a(ids).logits, rtol=1e-5, atol=1e-5)


def test_zero_lora_init_equals_pure_sharing(ids):
    base = make_tiny("gemma2")
    plain = convert(base, loops=2, init="stepwise").eval()
    zero = convert(base, loops=2, init="stepwise", rank=16, lora_init="zero").eval()
    torch.testing.assert_close(zero(ids).logits, plain(ids).logits, rtol=0, atol=1e-6)
    assert count_params(zero)["lora"] > 0


def test_ranks_per_module_type_and_cap():
    base = make_tiny("llama")  # hidden 64, k/v out 32, mlp 96
    model = convert(base, loops=2, init="average", rank_attn=48, rank_mlp="full")
    linears = model.depth_layers[0].linears
    assert linears["self_attn__q_proj"].rank == 48
    assert linears["self_attn__k_proj"].rank == 32  # capped to the smaller side
    assert linears["mlp__up_proj"].rank == 64
    model = convert(base, loops=2, init="average", rank=4, rank_attn=0)
    assert "self_attn__q_proj" not in model.depth_layers[0].linears
    assert model.depth_layers[0].linears["mlp__gate_proj"].rank == 4


def test_scratch_is_random_and_seeded(ids):
    base = make_tiny("llama")
    a = convert(base, loops=2, init="scratch", seed=1)
    b = convert(base, loops=2, init="scratch", seed=1)
    assert torch.equal(a(ids).logits, b(ids).logits)
    assert not torch.equal(a.get_input_embeddings().weight, base.get_input_embeddings().weight)


@pytest.mark.parametrize("bad", ["-1", "x", "1.5", "", None])
def test_parse_rank_rejects(bad):
    with pytest.raises(ValueError, match="rank"):
        parse_rank(bad)


def test_parse_rank_accepts():
    assert parse_rank("full") == "full" and parse_rank("0") == 0 and parse_rank(64) == 64


def test_unknown_family():
    from transformers import BertConfig, BertLMHeadModel

    base = BertLMHeadModel(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, is_decoder=True))
    with pytest.raises(ValueError, match="unsupported model family 'bert'"):
        convert(base, loops=2)


# --- caches ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_same_tokens_with_and_without_cache(family, ids):
    base = make_tiny(family)
    model = convert(base, loops=3 if family != "gemma3" else 2, init="average", rank=8,
                    per_depth_norms=True).eval()
    prompt = ids[:1, :6]
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, use_cache=True, **kw)
    uncached = model.generate(prompt, use_cache=False, **kw)
    assert cached.shape[1] == 18
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_decoding_matches_full_forward(family, ids):
    """Every depth has its own cache slot: a shared slot must not overwrite another depth's K/V."""
    model = convert(make_tiny(family), loops=2, init="stepwise", rank=4).eval()
    full = model(ids).logits
    out = model(ids[:, :8], use_cache=True)
    cache = out.past_key_values
    assert len(cache.layers) == model.config.text_config.num_hidden_layers  # L slots, not K
    steps = [out.logits]
    for t in range(8, ids.shape[1]):
        out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


# --- save / load ----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gemma3", "gpt_neox", "llama"])
def test_save_load_round_trip_is_bit_exact(family, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    model = convert(make_tiny(family), loops=2, init="average", rank=8, rank_mlp=4, per_depth_norms=True).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, RecursiveForCausalLM)
    assert loaded.config.layer_map == model.config.layer_map
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_tied_embeddings_stay_tied_after_load(tmp_path):
    from transformers import AutoModelForCausalLM

    model = convert(make_tiny("llama"), loops=2, init="lower")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight


# --- training mechanics ---------------------------------------------------------------
def test_gradients_reach_shared_block_and_every_depth_lora(ids):
    model = convert(make_tiny("llama"), loops=2, init="average", rank=4, per_depth_norms=True).train()
    model(ids, labels=ids).loss.backward()
    for layer in model.depth_layers:
        for own in layer.linears.values():
            assert own.lora_A.grad is not None and own.lora_A.grad.abs().sum() > 0
        for norm in layer.norms.values():
            assert norm.weight.grad is not None
    assert model.recursive_block[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients(ids):
    base = make_tiny("gemma3")
    grads = []
    for checkpointing in (False, True):
        model = convert(base, loops=2, init="average", rank=4, per_depth_norms=True).train()
        calls = []  # module hooks do not fire in recomputation: count the shared q_proj's forward calls
        q_proj = model.recursive_block[0].self_attn.q_proj
        q_forward = q_proj.forward
        q_proj.forward = lambda x: (calls.append(1), q_forward(x))[1]
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.depth_layers)
            assert not any(block.gradient_checkpointing for block in model.recursive_block)
        model(ids, labels=ids).loss.backward()
        # slot 0 runs at depths 0 and 3; checkpointing recomputes both in backward
        assert len(calls) == (4 if checkpointing else 2)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)

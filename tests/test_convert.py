"""Conversion correctness on small random models of every family."""
import itertools

import pytest
import torch

from rrt import RecursiveForCausalLM
from rrt.model.convert import convert, parse_rank, rank_caps, recorded_rank
from rrt.model.params import count_params
from rrt.model.relax import svd_method, truncated_svd

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
    rank = 20  # > a quarter of the 64x96 matrix: the full (exact) SVD
    assert svd_method(rank, 64, 96) == "full"
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


def _spectrum_matrix(rows, cols, singular_values, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(rows, len(singular_values), generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(cols, len(singular_values), generator=g, dtype=torch.float64)).Q
    return (u * singular_values) @ v.T


@pytest.mark.parametrize("shape", [(384, 256), (256, 384)])
@pytest.mark.parametrize("spectrum,tolerance", [
    # flat, like residuals of real layers (the hard case; SmolLM2 r=64: 0.9% on average)
    ("flat", 0.02),
    ("decaying", 1e-3),
])
def test_randomized_svd_is_near_the_best_rank_r_approximation(shape, spectrum, tolerance):
    rank = 32  # <= a quarter of 256: the randomized path
    n = min(shape)
    if spectrum == "flat":
        s = torch.linspace(3.0, 1.0, n, dtype=torch.float64)
    else:
        s = 0.9 ** torch.arange(n, dtype=torch.float64)
    x = _spectrum_matrix(*shape, s)
    torch.manual_seed(0)
    us, vh, method = truncated_svd(x.float(), rank)
    assert method == "randomized"
    assert us.shape == (shape[0], rank) and vh.shape == (rank, shape[1]) and us.dtype == torch.float32
    optimal = torch.linalg.svdvals(x)[rank:].square().sum().sqrt()  # Eckart-Young, fp64
    err = torch.linalg.matrix_norm(x - us.double() @ vh.double())
    assert optimal <= err <= (1 + tolerance) * optimal, (err / optimal - 1).item()
    torch.testing.assert_close(vh.double() @ vh.double().T, torch.eye(rank, dtype=torch.float64), atol=1e-5, rtol=0)


def test_full_svd_path_is_exact_at_full_rank():
    x = _spectrum_matrix(48, 80, torch.linspace(2.0, 0.5, 48, dtype=torch.float64)).float()
    us, vh, method = truncated_svd(x, 48)
    assert method == "full" and us.dtype == torch.float64  # fp64 at full rank only
    torch.testing.assert_close((us @ vh).float(), x, atol=1e-6, rtol=0)
    us, _, method = truncated_svd(x, 13)  # > 48/4
    assert method == "full" and us.dtype == torch.float32


@pytest.mark.parametrize("rank", [4, 48])  # randomized, full
def test_svd_of_a_zero_residual_gives_random_orthonormal_a(rank):
    """A zero residual (a depth whose layer is its slot's) has arbitrary singular vectors:
    B = 0 and A random orthonormal rows, a proper LoRA init, and seeded."""
    zero = torch.zeros(2, 48, 64)
    factors = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        us, vh, method = truncated_svd(zero, rank)
        assert method == ("randomized" if rank == 4 else "full")
        assert torch.equal(us, torch.zeros_like(us))
        torch.testing.assert_close((vh @ vh.mT).float(), torch.eye(rank).expand(2, rank, rank), atol=1e-5, rtol=0)
        assert vh.isfinite().all() and not torch.equal(vh[0], vh[1])
        factors.append(vh)
    assert torch.equal(factors[0], factors[1]) and not torch.equal(factors[0], factors[2])


def _lora_factors(model):
    return [(layer.depth, key, own) for layer in model.depth_layers for key, own in layer.linears.items()
            if own.rank > 0]


@pytest.mark.parametrize("lora_init", ["svd", "zero"])
@pytest.mark.parametrize("init", ["stepwise", "average", "lower", "random", "scratch"])
def test_every_lora_factor_trains(init, lora_init, ids):
    """Every LoRA factor of every depth gets a non-zero gradient within two optimizer steps.

    Where B = 0 at the start (lora_init="zero", scratch, and SVD of a zero residual: the
    depths whose own layer is their slot's under stepwise/lower/random), A's gradient
    B^T (dL/dy) x^T is exactly zero at the first step by construction, as in standard LoRA
    (PEFT): B's gradient is not, and once the first step has made B non-zero, A trains too.
    What must never happen is A = B = 0 (both gradients zero forever)."""
    model = convert(make_tiny("gemma2"), loops=2, init=init, rank=4, lora_init=lora_init).train()
    factors = _lora_factors(model)
    assert len(factors) == 6 * 7
    zero_b = {(d, k) for d, k, own in factors if not own.lora_B.any()}
    if init == "scratch" or lora_init == "zero":
        assert len(zero_b) == len(factors)
    elif init == "average":
        assert not zero_b
    else:  # the depths whose layer was copied into their slot
        cfg = model.config
        assert {d for d, _ in zero_b} == {d for d, s in enumerate(cfg.layer_map) if cfg.init_sources[s] == [d]}
    for _, _, own in factors:
        assert own.lora_A.abs().sum() > 0  # never a zero A
    lora = [p for _, _, own in factors for p in (own.lora_A, own.lora_B)]
    opt = torch.optim.SGD(lora, lr=0.1)

    model(ids, labels=ids).loss.backward()
    for d, k, own in factors:
        assert own.lora_B.grad.abs().sum() > 0, (d, k)
        assert (own.lora_A.grad.abs().sum() > 0) == ((d, k) not in zero_b), (d, k)
    opt.step()
    opt.zero_grad()
    model(ids, labels=ids).loss.backward()
    for d, k, own in factors:
        assert own.lora_A.grad.abs().sum() > 0 and own.lora_B.grad.abs().sum() > 0, (d, k)


@pytest.mark.parametrize("init", ["stepwise", "scratch"])
def test_zero_lora_init_is_standard_lora_and_seeded(init):
    base = make_tiny("llama")
    models = [convert(base, loops=2, init=init, rank=4, lora_init="zero", seed=s) for s in (3, 3, 4)]
    for model in models:
        for _, _, own in _lora_factors(model):
            fan_in = own.lora_A.shape[1]
            assert not own.lora_B.any()
            assert own.lora_A.abs().max() <= fan_in ** -0.5  # Kaiming-uniform, a=sqrt(5): U(+-1/sqrt(fan_in))
            assert own.lora_A.std() > 0.4 * fan_in ** -0.5  # (std 1/sqrt(3 fan_in))
    a, b, c = ([own.lora_A for _, _, own in _lora_factors(m)] for m in models)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not any(torch.equal(x, z) for x, z in zip(a, c))
    assert not torch.equal(a[0], a[1])  # each depth and linear its own draw


@pytest.mark.parametrize("family", FAMILIES)
def test_conversion_overwrites_every_tensor(family, monkeypatch):
    """Conversion builds the model without random init (no_init_weights): every tensor must
    then be written from the base model or the LoRA init, i.e. equal to a conversion of a
    randomly initialised model."""
    import contextlib

    import rrt.model.convert as convert_module

    base = make_tiny(family)
    for kw in (dict(init="average", rank=4, per_depth_norms=True), dict(init="stepwise", rank=8, lora_init="zero"),
               dict(init="lower")):
        fast = convert(base, loops=2, **kw)
        with monkeypatch.context() as m:
            m.setattr(convert_module, "no_init_weights", contextlib.nullcontext)
            slow = convert(base, loops=2, **kw)
        a, b = fast.state_dict(), slow.state_dict()
        assert a.keys() == b.keys()
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], kw
        for name, buffer in slow.named_buffers():
            assert torch.equal(buffer, dict(fast.named_buffers())[name]), name
        tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
        assert (fast.get_output_embeddings().weight is fast.get_input_embeddings().weight) == tied


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


def test_rank_above_every_linear_is_recorded_as_full():
    """A rank that caps every linear of a group is recorded as 'full' (what was built), not
    as the number asked for; one that caps only some linears keeps its value."""
    base = make_tiny("llama")  # attn: q/o 64, k/v 32; mlp: 64 (96 x 64)
    caps = rank_caps(base.config)
    assert caps["attn"] == {"self_attn.q_proj": 64, "self_attn.k_proj": 32, "self_attn.v_proj": 32,
                            "self_attn.o_proj": 64}
    assert set(caps["mlp"].values()) == {64}
    assert [recorded_rank(r, caps["attn"]) for r in (0, 8, 48, 64, 10**9, "full")] == [0, 8, 48, "full", "full", "full"]
    model = convert(base, loops=2, init="average", rank=10**9, rank_attn=48)
    assert (model.config.lora_rank_attn, model.config.lora_rank_mlp) == (48, "full")


@pytest.mark.parametrize("family", ["gemma", "gpt_neox"])
def test_huge_rank_round_trip_builds_the_same_shapes(family, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    model = convert(make_tiny(family), loops=2, init="stepwise", rank=10**9).eval()
    assert model.config.lora_rank_attn == model.config.lora_rank_mlp == "full"
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.lora_rank_attn == "full"
    a, b = model.state_dict(), loaded.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_lora_alpha_must_be_a_finite_positive_number(alpha):
    with pytest.raises(ValueError, match="lora_alpha must be a finite number > 0"):
        convert(make_tiny("llama"), loops=2, init="average", rank=4, lora_alpha=alpha)


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
        # The shared q_proj's runs, at every depth: each depth's view of it shares its hooks,
        # and the recomputation (of DepthLayer.forward, inside the module call) fires them.
        calls = []
        model.recursive_block[0].self_attn.q_proj.register_forward_hook(lambda *_: calls.append(1))
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

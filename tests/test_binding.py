"""Depth binding (`rrt.model.binding`): each depth runs its own view of the shared block,
built once, so a forward writes nothing into shared modules, depths' runs nest without
leaking into each other, the model runs under torch.compile, and rows at several depths
(the serving engine) are bound per call through a context that nests as well."""
import pytest
import torch

from rrt.model.convert import convert
from rrt.model.relax import ROW_DEPTHS

from .conftest import make_tiny


def _relaxed(family="gemma3"):
    """Gemma 3 at B=2 over 6 layers: slot 0 runs depth 0 (sliding attention) and depth 3
    (global), so the depths of one slot differ in identity, LoRA and norms."""
    return convert(make_tiny(family), loops=2, init="average", rank=4, per_depth_norms=True).eval()


def _attributes(modules):
    return [dict(vars(m)) for m in modules]


def _unchanged(modules, before) -> bool:
    """Every module's attributes are the very objects they were (no attribute written)."""
    return all(vars(m).keys() == b.keys() and all(vars(m)[k] is v for k, v in b.items())
               for m, b in zip(modules, before))


def test_running_depths_writes_nothing_into_the_shared_block(ids):
    model = _relaxed()
    shared = list(model.recursive_block.modules())
    during = []  # in the middle of each run of slot 0: (the running attention's KV-cache slot, untouched?)
    model.recursive_block[0].self_attn.register_forward_hook(
        lambda module, args, output: during.append((module.layer_idx, _unchanged(shared, before))))
    before = _attributes(shared)
    with torch.no_grad():
        model(ids)
    assert during == [(0, True), (3, True)]  # slot 0 ran at depths 0 and 3, each in its own view
    assert _unchanged(shared, before)


def test_a_model_run_inside_a_depths_run_does_not_leak(ids):
    """Re-entrancy: in the middle of depth 0's run (before its MLP) the whole model runs on
    another input; both runs give the logits they give alone."""
    model = _relaxed()
    other = ids.flip(0)
    with torch.no_grad():
        expected, expected_other = model(ids).logits, model(other).logits
        inner = {}

        def run_the_model(module, args):
            if "logits" not in inner:
                inner["logits"] = None  # the nested run fires this hook too
                inner["logits"] = model(other).logits

        model.recursive_block[0].mlp.register_forward_pre_hook(run_the_model)
        outer = model(ids).logits
    assert inner["logits"] is not None and torch.equal(inner["logits"], expected_other)
    assert torch.equal(outer, expected)


def test_depths_run_out_of_order_give_the_same_outputs(ids):
    """Each depth layer on the same input, in order and in reverse: the same outputs."""
    model = _relaxed()
    hidden = model.get_input_embeddings()(ids)
    positions = torch.arange(ids.shape[1])[None]
    rotary = model.base.model.rotary_emb
    kwargs = {t: dict(position_embeddings=rotary(hidden, positions, t), position_ids=positions)
              for t in set(model.config.text_config.layer_types)}
    types = model.config.text_config.layer_types
    with torch.no_grad():
        run = {d: lambda d=d: model.depth_layers[d](hidden, **kwargs[types[d]]) for d in range(len(types))}
        forward = {d: run[d]() for d in sorted(run)}
        backward = {d: run[d]() for d in sorted(run, reverse=True)}
    assert all(torch.equal(forward[d], backward[d]) for d in run)
    assert not torch.equal(forward[0], forward[3])  # one slot, two depths: different layers


def test_views_hold_the_shared_parameters_and_follow_the_model():
    model = _relaxed()
    slot = model.shared_slots[0]
    shared, view = model.recursive_block[0], slot.at(3)
    assert view is not shared and view.self_attn.q_proj.weight is shared.self_attn.q_proj.weight
    assert view.self_attn.layer_idx == 3 and shared.self_attn.layer_idx == 0  # each depth's KV-cache slot
    assert (view.self_attn.sliding_window, slot.at(0).self_attn.sliding_window) == (None, 4)
    # Views are not registered: each weight is listed once, under its checkpoint name.
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    assert len(names) == len(set(names)) and set(names) == set(model.state_dict())
    assert sum(n.startswith("recursive_block.0.") for n in names) == len(list(shared.parameters()))
    # A parameter set on the shared block (here: loading with assign=True) is the view's too.
    state = {k: v.clone().zero_() if k == "recursive_block.0.mlp.up_proj.weight" else v
             for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    assert view.mlp.up_proj.weight is shared.mlp.up_proj.weight and not view.mlp.up_proj.weight.any()
    model.double()
    assert view.self_attn.q_proj.weight.dtype == torch.float64
    model.train()
    assert slot.at(3).training and all(m.training for m in slot.at(3).modules())
    model.eval()
    assert not any(m.training for m in slot.at(3).modules())


def test_rows_at_several_depths_nest_and_match_each_depths_own_run():
    """The engine's call: one run of slot 0 over rows at depths 0 and 3, each row as its own
    depth's view computes it, also with another grouping nested inside."""
    model = _relaxed("llama")  # no sliding window: the same layer arguments at every depth
    slot = model.shared_slots[0]
    torch.manual_seed(0)
    hidden = torch.randn(4, 5, 64)
    positions = torch.arange(5)[None]  # every row at positions 0..4
    layer_kwargs = dict(position_embeddings=model.base.model.rotary_emb(hidden, positions), position_ids=positions)
    outer, inner = torch.tensor([0, 3, 3, 0]), torch.tensor([3, 3, 0, 0])

    def alone(depths):
        return torch.cat([slot.at(int(d))(hidden[r:r + 1], **layer_kwargs) for r, d in enumerate(depths)])

    with torch.no_grad():
        with slot.rows_at(outer) as layer:
            first = layer(hidden, **layer_kwargs)
            with slot.rows_at(inner) as nested:
                nested_out = nested(hidden, **layer_kwargs)
            again = layer(hidden, **layer_kwargs)
        torch.testing.assert_close(first, alone(outer), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(nested_out, alone(inner), rtol=1e-5, atol=1e-6)
        assert torch.equal(again, first)
        assert not torch.allclose(first, alone(inner))
    assert ROW_DEPTHS.get() == {}
    with pytest.raises(RuntimeError, match="ran outside `rows_at"):
        layer(hidden, **layer_kwargs)
    with pytest.raises(ValueError, match=r"slot 0 runs at depths \[0, 3\], not \[1\]"):
        with slot.rows_at(torch.tensor([0, 1])):
            pass
    with pytest.raises(ValueError, match=r"slot 0 runs at depths \[0, 3\], not 2"):
        slot.at(2)


def test_relaxed_forward_under_torch_compile_equals_eager(ids):
    """torch.compile (CPU, AOT autograd without a code generator: the compile itself is
    what is checked) traces every depth's view: the logits are eager's, bit for bit."""
    model = _relaxed()
    with torch.no_grad():
        eager = model(ids).logits
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager")(ids).logits
    assert torch.equal(compiled, eager)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_relaxed_forward_under_inductor_equals_eager(family, ids):
    """The default backend (inductor: generated C++ kernels; minutes on 2 cores)."""
    model = _relaxed(family)
    with torch.no_grad():
        eager = model(ids).logits
        torch._dynamo.reset()
        compiled = torch.compile(model)(ids).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
